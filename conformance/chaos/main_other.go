//go:build !linux

// Command chaos runs a 3-node Warren cluster on loopback under random faults and checks it kept
// its promises. It relies on Linux process handling (Pdeathsig), so it runs on Linux only.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "chaos: Linux only")
	os.Exit(2)
}

//go:build !linux

// Command soak runs a long mixed load against a Warren child process and checks it for lost
// messages, errors and leaks. It reads /proc and mounts a tmpfs, so it runs on Linux only.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "soak: Linux only (it reads /proc and mounts a tmpfs for the disk alarm)")
	os.Exit(2)
}

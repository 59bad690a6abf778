// Command warren-bench runs the bench load generator standalone, so
// bench/compare.sh does not depend on the state of the broker's main package.
package main

import (
	"fmt"
	"os"

	"github.com/warrenmq/warren/bench"
)

func main() {
	if err := bench.Run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// Command neonproxy is serverless PostgreSQL in one binary. See
// internal/cli for the commands and README.md for how to use them.
package main

import (
	"fmt"
	"os"

	"github.com/neonproxy/neonproxy/internal/cli"
)

func main() {
	if err := cli.Root().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "neonproxy:", err)
		os.Exit(1)
	}
}

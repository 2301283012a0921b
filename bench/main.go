// Command bench measures neonproxy against direct PostgreSQL and PgBouncer:
// cold wake (stopped compute → first row), warm connection setup, and pgbench
// throughput / per-query latency. It starts its own neonproxy (and
// PgBouncer) on free 127.0.0.1 ports in a temporary data directory and prints
// a plain-text report. Timings are never pass/fail; the exit status is
// non-zero only when the harness itself fails.
//
//	go run ./bench -neonproxy ./bin/neonproxy [-tries 25] [-duration 15s] [-quick]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	neonproxy     string
	tries         int
	duration      time.Duration
	connDuration  time.Duration // pgbench -C runs
	clients       int
	keep          bool
	skipPgBouncer bool
	quick         bool
}

func parseFlags() (options, error) {
	var o options
	flag.StringVar(&o.neonproxy, "neonproxy", "./bin/neonproxy", "path to the neonproxy binary")
	flag.IntVar(&o.tries, "tries", 25, "samples for the cold-wake and warm-connect measurements")
	flag.DurationVar(&o.duration, "duration", 15*time.Second, "length of each pgbench -S run")
	flag.IntVar(&o.clients, "clients", 8, "pgbench clients (-c)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (logs, data) after the run")
	flag.BoolVar(&o.skipPgBouncer, "skip-pgbouncer", false, "do not run the PgBouncer comparison")
	flag.BoolVar(&o.quick, "quick", false, "smoke run: -tries 5 -duration 3s")
	flag.Parse()
	if flag.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", flag.Args())
	}
	if o.quick {
		o.tries, o.duration = 5, 3*time.Second
	}
	if o.tries < 1 || o.clients < 1 || o.duration < time.Second {
		return o, errors.New("-tries and -clients must be ≥ 1 and -duration ≥ 1s")
	}
	o.connDuration = min(o.duration, 10*time.Second)
	return o, nil
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
		stop()
		os.Exit(1)
	}
}

// run sets up the environment, runs every phase and prints the report. Setup
// failures of neonproxy are fatal; failures of single phases are recorded in
// the report and make the run fail at the end.
func run(ctx context.Context, o options) (err error) {
	env, err := newEnv(o)
	if err != nil {
		return err
	}
	defer env.cleanup()

	px, err := startProxy(ctx, o.neonproxy, env)
	if err != nil {
		return err
	}
	defer px.stop()

	b := &bench{opts: o, env: env, proxy: px, rep: newReport(o)}
	b.runPhases(ctx)
	b.rep.print(os.Stdout)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", context.Cause(ctx))
	}
	if n := len(b.rep.problems); n > 0 {
		return fmt.Errorf("%d phase(s) failed (see report)", n)
	}
	return nil
}

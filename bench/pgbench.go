package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

const (
	pgbenchInitLimit = 10 * time.Minute
	pgbenchSlack     = 2 * time.Minute // beyond -T for connection setup and teardown
)

// pgTarget is how pgbench (libpq) reaches the compute on one path.
type pgTarget struct {
	name     string
	host     string // 127.0.0.1 or a unix socket directory
	port     int
	dbname   string
	password string // sent as PGPASSWORD; empty for trust
}

// args are the libpq connection arguments for pgbench.
func (t pgTarget) args() []string {
	return []string{"-h", t.host, "-p", strconv.Itoa(t.port), "-U", "postgres"}
}

// env is the libpq environment: no TLS on any path (the direct path is a
// unix socket), and the password where one is needed.
func (t pgTarget) env() []string {
	e := []string{"PGSSLMODE=disable"}
	if t.password != "" {
		e = append(e, "PGPASSWORD="+t.password)
	}
	return e
}

// pgbenchResult is what the bench reads from pgbench's summary.
type pgbenchResult struct {
	command   string // as a user could paste it (password elided)
	tps       float64
	latencyMS float64 // "latency average"; 0 when absent
	failed    int64
}

// pgbenchSelect runs pgbench -S (optionally -C) against t for d.
func pgbenchSelect(ctx context.Context, t pgTarget, clients int, d time.Duration, reconnect bool) (pgbenchResult, error) {
	args := []string{"-S", "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(2, clients)),
		"-T", strconv.Itoa(int(d.Round(time.Second) / time.Second)), "-n"}
	if reconnect {
		args = append(args, "-C")
	}
	args = append(append(args, t.args()...), t.dbname)
	ctx, cancel := context.WithTimeout(ctx, d+pgbenchSlack)
	defer cancel()
	out, cmdline, err := runPgbench(ctx, t, args)
	if err != nil {
		return pgbenchResult{command: cmdline}, err
	}
	r, err := parsePgbench(out)
	r.command = cmdline
	return r, err
}

// pgbenchInit runs pgbench -i -s scale against t.
func pgbenchInit(ctx context.Context, t pgTarget, scale int) (string, error) {
	args := append([]string{"-i", "-s", strconv.Itoa(scale), "-q"}, t.args()...)
	args = append(args, t.dbname)
	ctx, cancel := context.WithTimeout(ctx, pgbenchInitLimit)
	defer cancel()
	_, cmdline, err := runPgbench(ctx, t, args)
	return cmdline, err
}

// runPgbench runs pgbench and returns its output and a printable command.
func runPgbench(ctx context.Context, t pgTarget, args []string) (string, string, error) {
	cmd := exec.CommandContext(ctx, "pgbench", args...)
	cmd.Env = cleanEnv(t.env()...)
	cmdline := printable(t, args)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
		return string(out), cmdline, fmt.Errorf("%s: %w\n%s", cmdline, err, lastLines(string(out), 10))
	}
	return string(out), cmdline, nil
}

func printable(t pgTarget, args []string) string {
	var b strings.Builder
	for _, e := range t.env() {
		if strings.HasPrefix(e, "PGPASSWORD=") {
			e = "PGPASSWORD=…"
		}
		b.WriteString(e + " ")
	}
	b.WriteString("pgbench " + strings.Join(args, " "))
	return b.String()
}

var (
	reTPS     = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	reLatency = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	reFailed  = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

// parsePgbench reads tps, latency average and failures from pgbench's
// summary (PostgreSQL 15 format).
func parsePgbench(out string) (pgbenchResult, error) {
	var r pgbenchResult
	m := reTPS.FindStringSubmatch(out)
	if m == nil {
		return r, errors.New("pgbench output has no tps line:\n" + lastLines(out, 10))
	}
	var err error
	if r.tps, err = strconv.ParseFloat(m[1], 64); err != nil {
		return r, fmt.Errorf("pgbench tps %q: %w", m[1], err)
	}
	if m := reLatency.FindStringSubmatch(out); m != nil {
		if r.latencyMS, err = strconv.ParseFloat(m[1], 64); err != nil {
			return r, fmt.Errorf("pgbench latency %q: %w", m[1], err)
		}
	}
	if m := reFailed.FindStringSubmatch(out); m != nil {
		r.failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return r, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
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
	pid      int    // the pooler's process, for its CPU time; 0 for direct
	floor    bool   // a floor pooler (floor.go): no SCRAM, so no -C workload
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
	p99       time.Duration // from the per-transaction log; 0 without -l
	logged    int           // transactions in the per-transaction log
	processed int64         // "number of transactions actually processed"
}

// pgbenchSelect runs pgbench -S (optionally -C) against t for d.
func pgbenchSelect(ctx context.Context, t pgTarget, clients int, d time.Duration, reconnect bool) (pgbenchResult, error) {
	return pgbenchRun(ctx, t, pgbenchSpec{clients: clients, duration: d, reconnect: reconnect})
}

// pgbenchSpec is one pgbench -S run.
type pgbenchSpec struct {
	clients   int
	duration  time.Duration
	reconnect bool   // -C
	logPrefix string // non-empty: -l --log-prefix, and p99 from the log files
}

// args are pgbench's options for the run (without connection arguments).
func (s pgbenchSpec) args() []string {
	args := []string{"-S", "-c", strconv.Itoa(s.clients), "-j", strconv.Itoa(min(2, s.clients)),
		"-T", strconv.Itoa(int(s.duration.Round(time.Second) / time.Second)), "-n"}
	if s.reconnect {
		args = append(args, "-C")
	}
	if s.logPrefix != "" {
		args = append(args, "-l", "--log-prefix="+s.logPrefix)
	}
	return args
}

// pgbenchRun runs pgbench -S as spec says against t.
func pgbenchRun(ctx context.Context, t pgTarget, spec pgbenchSpec) (pgbenchResult, error) {
	args := append(append(spec.args(), t.args()...), t.dbname)
	ctx, cancel := context.WithTimeout(ctx, spec.duration+pgbenchSlack)
	defer cancel()
	out, cmdline, err := runPgbench(ctx, t, args)
	if err != nil {
		return pgbenchResult{command: cmdline}, err
	}
	r, err := parsePgbench(out)
	r.command = cmdline
	if err != nil || spec.logPrefix == "" {
		return r, err
	}
	r.p99, r.logged, err = logP99(spec.logPrefix)
	return r, err
}

// logP99 reads pgbench's per-transaction logs (PREFIX.PID for thread 0,
// PREFIX.PID.N for the others; the third column is the latency in µs),
// returns the nearest-rank p99 and the number of transactions, and removes
// the files.
func logP99(prefix string) (time.Duration, int, error) {
	files, err := filepath.Glob(prefix + ".*")
	if err != nil || len(files) == 0 {
		return 0, 0, fmt.Errorf("no pgbench log files %s.*: %v", prefix, err)
	}
	var lat []time.Duration
	for _, f := range files {
		l, err := readLatencies(f)
		os.Remove(f)
		if err != nil {
			return 0, 0, err
		}
		lat = append(lat, l...)
	}
	if len(lat) == 0 {
		return 0, 0, fmt.Errorf("pgbench logs %s.* hold no transactions", prefix)
	}
	slices.Sort(lat)
	return percentile(lat, 99), len(lat), nil
}

// readLatencies reads the latency column of one pgbench log file.
func readLatencies(path string) ([]time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("pgbench log: %w", err)
	}
	defer f.Close()
	var out []time.Duration
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			return nil, fmt.Errorf("%s:%d: want ≥ 3 columns: %q", path, n, sc.Text())
		}
		if fields[2] == "failed" || fields[2] == "skipped" {
			continue // counted in pgbench's summary
		}
		us, err := strconv.ParseInt(fields[2], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: latency %q: %w", path, n, fields[2], err)
		}
		out = append(out, time.Duration(us)*time.Microsecond)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
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
		msg := lastLines(string(out), 10)
		if first := errorLines(string(out), 5); first != "" && !strings.Contains(msg, first) {
			msg = first + "\n…\n" + msg
		}
		return string(out), cmdline, fmt.Errorf("%s: %w\n%s", cmdline, err, msg)
	}
	return string(out), cmdline, nil
}

// errorLines returns the first n lines of pgbench output that report a
// client's error (they come before the summary that lastLines shows).
func errorLines(out string, n int) string {
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if len(got) == n {
			break
		}
		if strings.Contains(l, "error") && !strings.Contains(l, "Run was aborted") {
			got = append(got, l)
		}
	}
	return strings.Join(got, "\n")
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
	reDone    = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
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
	if m := reDone.FindStringSubmatch(out); m != nil {
		r.processed, _ = strconv.ParseInt(m[1], 10, 64)
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

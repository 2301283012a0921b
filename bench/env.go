package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// env is the temporary directory the run lives in.
type env struct {
	dir  string // /tmp/neonproxy-bench-*, mode 0711
	keep bool
}

func newEnv(o options) (*env, error) {
	dir, err := os.MkdirTemp("/tmp", "neonproxy-bench-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	// Computes (and PgBouncer) run as the OS user postgres, which must be able
	// to traverse the directory.
	if err := os.Chmod(dir, 0o711); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("chmod temp dir: %w", err)
	}
	return &env{dir: dir, keep: o.keep}, nil
}

func (e *env) path(elem ...string) string {
	return filepath.Join(append([]string{e.dir}, elem...)...)
}

func (e *env) cleanup() {
	if e.keep {
		fmt.Fprintf(os.Stderr, "bench: kept %s (logs, data, configs)\n", e.dir)
		return
	}
	if err := os.RemoveAll(e.dir); err != nil {
		fmt.Fprintf(os.Stderr, "bench: remove %s: %v\n", e.dir, err)
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ports, err := freePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// freePorts returns n distinct TCP ports on 127.0.0.1 that were free a
// moment ago (each is held open until all are picked).
// awaitTCP polls addr until it accepts a connection, the process behind it
// exits (exited closes) or limit passes.
func awaitTCP(ctx context.Context, addr string, limit time.Duration, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited before listening on %s", addr)
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", addr, context.Cause(ctx))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// mkdirTraversable creates dir with mode 0711 (whatever the umask): the
// computes (and PgBouncer) run as the OS user postgres, which must be
// able to traverse it.
func mkdirTraversable(dir string) error {
	if err := os.Mkdir(dir, 0o711); err != nil {
		return err
	}
	return os.Chmod(dir, 0o711)
}

// tail returns the last n lines of the file at path, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	return lastLines(string(b), n)
}

// cleanEnv is os.Environ without libpq's PG* variables, so that the
// caller's environment cannot change what pgbench connects to.
func cleanEnv(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"time"
)

const (
	daemonStartLimit = 60 * time.Second
	daemonStopLimit  = 30 * time.Second
)

// daemon is a running neonproxy subprocess (serve or walkeeper).
type daemon struct {
	name   string // for messages: "neonproxy", "walkeeper wk1"
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd.Wait returns
}

// startDaemon starts bin with args in its own process group (a terminal
// Ctrl-C reaches only the bench, which then stops it in order), stderr
// appended to logPath and stdout copied to logPath's .stdout sibling, and
// returns once a line of stdout matches ready, with the match's first group.
func startDaemon(ctx context.Context, name, bin, logPath string, ready *regexp.Regexp, args ...string) (*daemon, string, error) {
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, "", fmt.Errorf("open %s log: %w", name, err)
	}
	defer logFile.Close() // the child keeps its own descriptor
	d := &daemon{name: name, cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	d.cmd.Stderr = logFile
	d.cmd.Env = cleanEnv()
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		return nil, "", fmt.Errorf("%s stdout: %w", name, err)
	}
	if err := d.cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start %s: %w", name, err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	m, err := d.awaitReady(ctx, stdout, strings.TrimSuffix(logPath, ".log")+".stdout", ready)
	if err != nil {
		d.stop()
		return nil, "", fmt.Errorf("%s did not become ready: %w\n--- last lines of %s ---\n%s", name, err, logPath, tail(logPath, 20))
	}
	return d, m, nil
}

// awaitReady reads stdout until a line matches ready. It keeps copying
// stdout to outPath so the child never blocks on a full pipe.
func (d *daemon) awaitReady(ctx context.Context, stdout io.Reader, outPath string, ready *regexp.Regexp) (string, error) {
	found := make(chan string, 1)
	out, err := os.OpenFile(outPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return "", fmt.Errorf("create %s stdout file: %w", d.name, err)
	}
	go func() {
		defer out.Close()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			fmt.Fprintln(out, sc.Text())
			if m := ready.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, daemonStartLimit)
	defer cancel()
	select {
	case s := <-found:
		return s, nil
	case <-d.exited:
		return "", fmt.Errorf("%s exited: %v", d.name, d.cmd.ProcessState)
	case <-ctx.Done():
		return "", fmt.Errorf("waiting for %q on stdout: %w", ready, context.Cause(ctx))
	}
}

// running reports whether the process has not exited yet.
func (d *daemon) running() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits; SIGKILL after daemonStopLimit.
func (d *daemon) stop() {
	if !d.running() {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(daemonStopLimit):
		fmt.Fprintf(os.Stderr, "bench: %s did not stop within %s; killing it\n", d.name, daemonStopLimit)
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

// pid is the process id (for its RSS, or kill -9).
func (d *daemon) pid() int { return d.cmd.Process.Pid }

// Package testconsul runs a real Consul agent (`consul agent -dev`) on
// loopback for tests. The binary is built by `make consul`
// (scripts/build-consul.sh) and found through NEONPROXY_CONSUL, which the
// Makefile sets for `make test`, or in the build script's cache directory.
package testconsul

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Version is the Consul release the tests run.
const Version = "1.14.11"

// Binary returns the path of the Consul agent binary.
func Binary() (string, error) {
	if p := os.Getenv("NEONPROXY_CONSUL"); p != "" {
		return p, nil
	}
	cache := os.Getenv("NEONPROXY_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(home, ".cache", "neonproxy")
	}
	p := filepath.Join(cache, "consul-"+Version, "consul")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("Consul agent binary not found at %s and NEONPROXY_CONSUL is not set: run `make consul` (make test does)", p)
	}
	return p, nil
}

// AgentArgs is the command line of a dev agent named node with every port
// on 127.0.0.1 (ports: HTTP, serf LAN, serf WAN, server RPC), DNS and gRPC
// off (in 1.14 a server listens for gRPC-TLS on 8503 unless told not to).
func AgentArgs(node string, ports []int, dataDir string) []string {
	return []string{"agent", "-dev",
		"-node", node,
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-advertise", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]),
		"-serf-lan-port", strconv.Itoa(ports[1]),
		"-serf-wan-port", strconv.Itoa(ports[2]),
		"-server-port", strconv.Itoa(ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-data-dir", dataDir,
	}
}

// Agent is a running dev agent.
type Agent struct {
	// Addr is the HTTP API's host:port.
	Addr string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// Start runs `consul agent -dev` with every port on 127.0.0.1 (free ports;
// DNS and gRPC off), waits until it has elected itself leader, and stops
// it when the test ends.
func Start(t testing.TB) *Agent { return start(t) }

// StartWithACL is Start with ACLs on, deny by default, and token as the
// management (and agent) token: only calls that send it are allowed.
func StartWithACL(t testing.TB, token string) *Agent {
	return start(t, "-hcl", fmt.Sprintf(
		`acl { enabled = true, default_policy = "deny", tokens { initial_management = %q, agent = %q } }`, token, token))
}

func start(t testing.TB, extra ...string) *Agent {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	ports, err := freePorts(4)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a := &Agent{Addr: "127.0.0.1:" + strconv.Itoa(ports[0]), out: &syncBuffer{}, done: make(chan struct{})}
	a.cmd = exec.Command(bin, append(AgentArgs("neonproxy-test", ports, dir), extra...)...)
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start consul agent: %v", err)
	}
	go func() { _ = a.cmd.Wait(); close(a.done) }()
	t.Cleanup(a.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.waitLeader(ctx); err != nil {
		a.Stop()
		t.Fatalf("consul agent: %v\n%s", err, a.out.String())
	}
	return a
}

func (a *Agent) waitLeader(ctx context.Context) error {
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.Addr+"/v1/status/leader", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && len(bytes.Trim(b.Bytes(), "\" \n")) > 0 {
				return nil
			}
		}
		select {
		case <-a.done:
			return errors.New("exited before electing a leader")
		case <-ctx.Done():
			return fmt.Errorf("no leader: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop ends the agent (SIGTERM, then SIGKILL after 10 s).
func (a *Agent) Stop() {
	select {
	case <-a.done:
		return
	default:
	}
	_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		<-a.done
	}
}

// Log is what the agent printed.
func (a *Agent) Log() string { return a.out.String() }

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

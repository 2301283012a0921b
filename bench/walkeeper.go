package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var walkeeperReadyLine = regexp.MustCompile(`walkeeper is ready: http://(\S+)`)

// walkeepers are standalone `neonproxy walkeeper` processes, wk1, wk2, …
// in the order of walkeeper.peers.
type walkeepers struct {
	bin   string
	env   *env
	procs []*daemon
	names []string // wk1, wk2, …
	addrs []string // host:port of each keeper's HTTP API
	dirs  []string // each keeper's data_dir
	// token is the keepers' walkeeper.token (empty: none, they listen on
	// 127.0.0.1 only).
	token string
}

// startWalkeepers starts n standalone keepers from the binary under test,
// each with its own config <e>/wkI.yaml, data_dir <e>/wkI, free 127.0.0.1
// port and log <e>/wkI.log, and returns once each has printed its ready
// line and answered GET /healthz. On error the ones started are stopped.
func startWalkeepers(ctx context.Context, o options, e *env, n int) (*walkeepers, error) {
	return startTokenWalkeepers(ctx, o, e, n, "")
}

// startTokenWalkeepers is startWalkeepers with walkeeper.token set to
// token in each keeper's config (empty: none).
func startTokenWalkeepers(ctx context.Context, o options, e *env, n int, token string) (*walkeepers, error) {
	bin, err := neonproxyBin(o)
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(e.dir, 0o700); err != nil {
		return nil, err
	}
	ks := &walkeepers{bin: bin, env: e, token: token}
	for i := 1; i <= n; i++ {
		if err := ks.start(ctx, fmt.Sprintf("wk%d", i)); err != nil {
			ks.stop()
			return nil, err
		}
	}
	return ks, nil
}

func (ks *walkeepers) start(ctx context.Context, name string) error {
	e := ks.env
	port, err := freePort()
	if err != nil {
		return err
	}
	dataDir := e.path(name)
	cfg := fmt.Sprintf("data_dir: %s\nwalkeeper:\n  listen: 127.0.0.1:%d\n", dataDir, port)
	if ks.token != "" {
		cfg += fmt.Sprintf("  token: %s\n", strconv.Quote(ks.token))
	}
	cfg += "log:\n  level: info\n"
	cfgPath := ks.configPath(name)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write %s config: %w", name, err)
	}
	d, addr, err := ks.launch(ctx, name)
	if err != nil {
		return err
	}
	ks.procs = append(ks.procs, d)
	ks.names = append(ks.names, name)
	ks.addrs = append(ks.addrs, addr)
	ks.dirs = append(ks.dirs, dataDir)
	return nil
}

// launch starts keeper name from its config <e>/NAME.yaml (log appended
// to) and returns once it has printed its ready line and answered GET
// /healthz.
func (ks *walkeepers) launch(ctx context.Context, name string) (*daemon, string, error) {
	d, addr, err := startDaemon(ctx, "walkeeper "+name, ks.bin, ks.env.path(name+".log"), walkeeperReadyLine,
		"walkeeper", "--config", ks.configPath(name))
	if err != nil {
		return nil, "", err
	}
	if err := healthz(ctx, addr); err != nil {
		d.stop()
		return nil, "", fmt.Errorf("walkeeper %s: %w", name, err)
	}
	return d, addr, nil
}

func (ks *walkeepers) configPath(name string) string { return ks.env.path(name + ".yaml") }

// kill sends SIGKILL to keeper i and waits until it has exited.
func (ks *walkeepers) kill(i int) error {
	d := ks.procs[i]
	if err := syscall.Kill(d.pid(), syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %s (%d): %w", d.name, d.pid(), err)
	}
	select {
	case <-d.exited:
		return nil
	case <-time.After(daemonStopLimit):
		return fmt.Errorf("%s still running %s after SIGKILL", d.name, daemonStopLimit)
	}
}

// restart starts keeper i again, after kill, on the same config (port and
// data_dir).
func (ks *walkeepers) restart(ctx context.Context, i int) error {
	if ks.procs[i].running() {
		return fmt.Errorf("restart: %s is still running", ks.procs[i].name)
	}
	d, addr, err := ks.launch(ctx, ks.names[i])
	if err != nil {
		return err
	}
	ks.procs[i] = d
	if addr != ks.addrs[i] {
		return fmt.Errorf("%s restarted on %s, was %s", ks.names[i], addr, ks.addrs[i])
	}
	return nil
}

// healthz checks that the keeper at addr answers GET /healthz with 200.
func healthz(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("GET /healthz: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /healthz: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// stop stops every keeper (SIGTERM, SIGKILL after daemonStopLimit), the
// last started first.
func (ks *walkeepers) stop() {
	for i := len(ks.procs) - 1; i >= 0; i-- {
		ks.procs[i].stop()
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"
)

var walkeeperReadyLine = regexp.MustCompile(`walkeeper is ready: http://(\S+)`)

// walkeepers are standalone `neonproxy walkeeper` processes, wk1, wk2, …
// in the order of walkeeper.peers.
type walkeepers struct {
	procs []*daemon
	addrs []string // host:port of each keeper's HTTP API
	dirs  []string // each keeper's data_dir
}

// startWalkeepers starts n standalone keepers from the binary under test,
// each with its own config <e>/wkI.yaml, data_dir <e>/wkI, free 127.0.0.1
// port and log <e>/wkI.log, and returns once each has printed its ready
// line and answered GET /healthz. On error the ones started are stopped.
func startWalkeepers(ctx context.Context, o options, e *env, n int) (*walkeepers, error) {
	bin, err := neonproxyBin(o)
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(e.dir, 0o700); err != nil {
		return nil, err
	}
	ks := &walkeepers{}
	for i := 1; i <= n; i++ {
		if err := ks.start(ctx, bin, e, fmt.Sprintf("wk%d", i)); err != nil {
			ks.stop()
			return nil, err
		}
	}
	return ks, nil
}

func (ks *walkeepers) start(ctx context.Context, bin string, e *env, name string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	dataDir := e.path(name)
	cfg := fmt.Sprintf("data_dir: %s\nwalkeeper:\n  listen: 127.0.0.1:%d\nlog:\n  level: info\n", dataDir, port)
	cfgPath := e.path(name + ".yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write %s config: %w", name, err)
	}
	d, addr, err := startDaemon(ctx, "walkeeper "+name, bin, e.path(name+".log"), walkeeperReadyLine, "walkeeper", "--config", cfgPath)
	if err != nil {
		return err
	}
	ks.procs = append(ks.procs, d)
	if err := healthz(ctx, addr); err != nil {
		return fmt.Errorf("walkeeper %s: %w", name, err)
	}
	ks.addrs = append(ks.addrs, addr)
	ks.dirs = append(ks.dirs, dataDir)
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

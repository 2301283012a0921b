package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

const (
	branch           = "main"
	adminCallTimeout = 60 * time.Second
)

// proxy is a running neonproxy serve subprocess.
type proxy struct {
	*daemon         // the serve process; a restart replaces it
	bin      string // absolute path of the binary
	cfgPath  string // the generated config: a restart reuses it (same ports, data dir)
	dataDir  string
	logPath  string
	port     int
	admin    string // http://127.0.0.1:PORT
	password string // of postgres on branch main
	http     *http.Client
}

var readyLine = regexp.MustCompile(`psql '(postgres://[^']+)'`)

// neonproxyBin is the absolute path of the binary under test (-neonproxy),
// which runs both serve and walkeeper.
func neonproxyBin(o options) (string, error) {
	bin, err := filepath.Abs(o.neonproxy)
	if err != nil {
		return "", fmt.Errorf("neonproxy path: %w", err)
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("neonproxy binary (build it with make build): %w", err)
	}
	return bin, nil
}

// startProxy writes a config into e and starts neonproxy, returning once it
// has printed its connection string.
func startProxy(ctx context.Context, o options, e *env) (*proxy, error) {
	p, err := newProxy(e, o)
	if err != nil {
		return nil, err
	}
	if err := p.launch(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// ownProxy prepares a section's own neonproxy in a new directory e: the
// binary and the bench's config written (not started yet).
func ownProxy(e *env, o options) (*proxy, error) {
	if err := mkdirTraversable(e.dir); err != nil {
		return nil, err
	}
	return newProxy(e, o)
}

// newProxy is a neonproxy in e with the bench's config written.
func newProxy(e *env, o options) (*proxy, error) {
	bin, err := neonproxyBin(o)
	if err != nil {
		return nil, err
	}
	p := &proxy{bin: bin, dataDir: e.path("data"), logPath: e.path("neonproxy.log"),
		http: &http.Client{Timeout: adminCallTimeout}}
	if p.cfgPath, err = p.writeConfig(e, o); err != nil {
		return nil, err
	}
	return p, nil
}

// restart starts neonproxy again with the same config (same ports and data
// dir) after its process has exited (e.g. was killed); the log is appended
// to.
func (p *proxy) restart(ctx context.Context) error {
	if p.running() {
		return errors.New("restart: neonproxy is still running")
	}
	return p.launch(ctx)
}

// launch starts the neonproxy process and returns once it has printed its
// connection string. On failure p keeps its previous (exited) process.
func (p *proxy) launch(ctx context.Context) error {
	d, conn, err := startDaemon(ctx, "neonproxy", p.bin, p.logPath, readyLine, "serve", "--config", p.cfgPath)
	if err != nil {
		return err
	}
	u, err := url.Parse(conn)
	if err != nil {
		d.stop()
		return fmt.Errorf("parse connection string: %w", err)
	}
	pw, ok := u.User.Password()
	if !ok {
		d.stop()
		return errors.New("connection string has no password")
	}
	p.daemon, p.password = d, pw
	return nil
}

// computeMaxConnections lets the direct path run the many-clients workload
// with room to spare (superuser_reserved_connections, neonproxy's own
// verifier lookups, the bench's observer connection).
const computeMaxConnections = manyClients + 150 // + the floor poolers' 2 × pool size

// writeConfig writes the neonproxy config. The pool keys are written out
// even where they equal the defaults, so that the comparison with
// PgBouncer's default_pool_size is explicit. Without o.walkeeperPeers
// serve embeds its WAL keeper, without o.pagestoreAddress its page store;
// with o.consulAddress it is a Consul node whose consul.node is its listen
// address.
func (p *proxy) writeConfig(e *env, o options) (string, error) {
	ports, err := freePorts(2)
	if err != nil {
		return "", err
	}
	port, adminPort := ports[0], ports[1]
	p.port, p.admin = port, fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
admin_listen: 127.0.0.1:%d
data_dir: %s
default_branch: %s
compute:
  suspend_timeout: %s
%s  max_connections: %d
pool:
  default_pool_size: %d
  max_client_conn: %d
log:
  level: %s
`, port, adminPort, p.dataDir, branch, shortDuration(cmp.Or(o.suspendTimeout, defaultSuspendTimeout)), tierKeys(o),
		computeMaxConnections, o.poolSize, maxClientConn(o), cmp.Or(o.proxyLogLevel, "warn"))
	if len(o.walkeeperPeers) > 0 {
		peers := make([]string, len(o.walkeeperPeers))
		for i, addr := range o.walkeeperPeers {
			peers[i] = strconv.Quote(addr)
		}
		cfg += fmt.Sprintf("walkeeper:\n  peers: [%s]\n  quorum: %d\n", strings.Join(peers, ", "), o.walkeeperQuorum)
		if o.walkeeperToken != "" {
			cfg += fmt.Sprintf("  token: %s\n", strconv.Quote(o.walkeeperToken))
		}
		if o.walkeeperViaFrontDoor {
			cfg += "  via_front_door: true\n"
		}
	}
	if o.pagestoreAddress != "" {
		cfg += fmt.Sprintf("pagestore:\n  address: %s\n", strconv.Quote(o.pagestoreAddress))
		if o.pagestoreToken != "" {
			cfg += fmt.Sprintf("  token: %s\n", strconv.Quote(o.pagestoreToken))
		}
	}
	if o.consulAddress != "" {
		cfg += fmt.Sprintf("consul:\n  address: %s\n  node: %s\n", strconv.Quote(o.consulAddress), strconv.Quote(p.listenAddr()))
	}
	if o.bootstrapPassword != "" {
		cfg += fmt.Sprintf("bootstrap:\n  password: %s\n", strconv.Quote(o.bootstrapPassword))
	}
	path := e.path("neonproxy.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", fmt.Errorf("write neonproxy config: %w", err)
	}
	return path, nil
}

// defaultSuspendTimeout is compute.suspend_timeout unless a section sets
// options.suspendTimeout: long, so that computes stop only when the bench
// asks (POST /v1/branches/NAME/suspend).
const defaultSuspendTimeout = time.Hour

// tierKeys are the compute keys of the tiers below running that a section
// sets (the tiers and prewarm sections): compute.idle_after (or 0 with
// noIdleTier), compute.offload_after and compute.prewarm (false with
// prewarmOff, true with prewarmOn), each written only when set, so that
// other sections keep neonproxy's defaults.
func tierKeys(o options) string {
	var s string
	switch {
	case o.noIdleTier:
		s += "  idle_after: 0\n"
	case o.idleAfter > 0:
		s += fmt.Sprintf("  idle_after: %s\n", shortDuration(o.idleAfter))
	}
	if o.offloadAfter > 0 {
		s += fmt.Sprintf("  offload_after: %s\n", shortDuration(o.offloadAfter))
	}
	switch {
	case o.prewarmOff:
		s += "  prewarm: false\n"
	case o.prewarmOn:
		s += "  prewarm: true\n"
	}
	return s
}

// shortDuration is d as Go prints it without trailing zero units: 1h, 1m,
// 300ms (not 1h0m0s, 1m0s).
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// listenAddr is the front door's address (listen; in Consul mode also
// consul.node, the value of the branch locks the node holds).
func (p *proxy) listenAddr() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

// url is the client connection string through the proxy.
func (p *proxy) url(sslmode string) string { return p.branchURL(branch, sslmode) }

// branchURL is the client connection string of branch name (its database
// name selects the branch).
func (p *proxy) branchURL(name, sslmode string) string {
	return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?sslmode=%s",
		url.QueryEscape(p.password), p.port, name, sslmode)
}

// computeStatus is the part of GET /v1/branches/NAME the bench reads.
type computeStatus struct {
	State string `json:"state"`
	PID   int    `json:"pid"`
	// Tier is running, idle, suspended or zero; TierSeconds how long it
	// has been there.
	Tier        string  `json:"tier"`
	TierSeconds float64 `json:"tier_seconds"`
	// Prewarm is the branch's predictive pre-warm (nil: not reported).
	Prewarm *struct {
		Enabled       bool    `json:"enabled"`
		PeriodSeconds float64 `json:"period_seconds"`
		// NextArrival is the predicted next arrival (zero: none).
		NextArrival time.Time `json:"next_arrival"`
	} `json:"prewarm"`
}

// branchInfo is the part of GET /v1/branches/NAME the bench reads.
type branchInfo struct {
	Compute          computeStatus `json:"compute"`
	ParentLSN        string        `json:"parent_lsn"`
	LogicalSizeBytes int64         `json:"logical_size_bytes"`
	UniqueBytes      int64         `json:"unique_bytes"`
	LocalBytes       int64         `json:"local_bytes"`
	Timeline         uint64        `json:"timeline"`
	// WALKeeper is set while the compute runs.
	WALKeeper *struct {
		State   string `json:"state"`
		Keepers []struct {
			Name  string `json:"name"`
			State string `json:"state"`
		} `json:"keepers"`
	} `json:"wal_keeper"`
}

func (p *proxy) status(ctx context.Context) (computeStatus, error) {
	b, err := p.branchInfo(ctx, branch)
	return b.Compute, err
}

func (p *proxy) branchInfo(ctx context.Context, name string) (branchInfo, error) {
	var b branchInfo
	err := p.call(ctx, http.MethodGet, "/v1/branches/"+name, &b)
	return b, err
}

func (p *proxy) suspend(ctx context.Context) error { return p.suspendBranch(ctx, branch) }

func (p *proxy) suspendBranch(ctx context.Context, name string) error {
	return p.call(ctx, http.MethodPost, "/v1/branches/"+name+"/suspend", nil)
}

// waitState polls the admin API until main's compute is in state want.
func (p *proxy) waitState(ctx context.Context, want string, limit time.Duration) error {
	return p.waitBranchState(ctx, branch, want, limit)
}

// waitBranchState polls the admin API until name's compute is in state want.
func (p *proxy) waitBranchState(ctx context.Context, name, want string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	last := ""
	for {
		b, err := p.branchInfo(ctx, name)
		if err != nil {
			return err
		}
		if b.Compute.State == want {
			return nil
		}
		last = b.Compute.State
		select {
		case <-ctx.Done():
			return fmt.Errorf("compute of %s still %q, want %q: %w", name, last, want, context.Cause(ctx))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (p *proxy) call(ctx context.Context, method, path string, out any) error {
	return p.send(ctx, method, path, nil, out)
}

// send is call with a JSON request body (none when in is nil).
func (p *proxy) send(ctx context.Context, method, path string, in, out any) error {
	var reqBody io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("admin %s %s: encode: %w", method, path, err)
		}
		reqBody = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.admin+path, reqBody)
	if err != nil {
		return fmt.Errorf("admin %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("admin %s %s: read body: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("admin %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(body)))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("admin %s %s: decode: %w", method, path, err)
	}
	return nil
}

// computeSocketDir reads the running compute's socket directory and port
// from its postmaster.pid (line 5: socket dir, line 4: port).
func (p *proxy) computeSocketDir() (dir string, port int, err error) {
	path := filepath.Join(p.dataDir, "computes", "branches", branch, "pgdata", "postmaster.pid")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", 0, fmt.Errorf("read compute's postmaster.pid: %w", err)
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 5 || lines[4] == "" {
		return "", 0, fmt.Errorf("%s: no socket directory on line 5", path)
	}
	port, err = strconv.Atoi(strings.TrimSpace(lines[3]))
	if err != nil {
		return "", 0, fmt.Errorf("%s: port on line 4: %w", path, err)
	}
	return strings.TrimSpace(lines[4]), port, nil
}

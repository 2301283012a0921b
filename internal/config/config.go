// Package config loads neonproxy's YAML configuration, applies documented
// defaults and NEONPROXY_<KEY> environment overrides (dots become
// underscores), and validates the result. config.yaml at the repository root
// is the annotated reference; Default() must agree with it.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"gopkg.in/yaml.v3"

	"github.com/neonproxy/neonproxy/internal/httpapi"
)

// Duration is a time.Duration that reads "300s", "5m" or a bare number of
// seconds from YAML and the environment.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

func parseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		return Duration(n * float64(time.Second)), nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (use e.g. 300s, 5m)", s)
	}
	return Duration(v), nil
}

// Bytes is a size that reads "10GiB", "512MB", "1.5 GB" or a bare number of
// bytes from YAML and the environment.
type Bytes int64

func (b Bytes) String() string { return humanize.IBytes(uint64(b)) }

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *Bytes) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseBytes(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (b Bytes) MarshalYAML() (any, error) { return b.String(), nil }

func parseBytes(s string) (Bytes, error) {
	v, err := humanize.ParseBytes(strings.TrimSpace(s))
	if err != nil || v > math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q (use e.g. 10GiB, 512MB, 0)", s)
	}
	return Bytes(v), nil
}

// TLS configures TLS termination at the front door.
type TLS struct {
	// CertFile and KeyFile: PEM files. Both empty: a self-signed development
	// certificate for *.<SNISuffix> and localhost is generated into
	// <data_dir>/tls/ at first start.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// SNISuffix: a TLS server name BRANCH.<SNISuffix> routes to BRANCH.
	SNISuffix string `yaml:"sni_suffix"`
	// Require refuses plaintext clients with a clear error.
	Require bool `yaml:"require"`
}

// Compute configures the PostgreSQL computes.
type Compute struct {
	PostgresBinDir string   `yaml:"postgres_bin_dir"`
	SuspendTimeout Duration `yaml:"suspend_timeout"`
	// IdleAfter freezes an unused compute (the idle tier) this long after
	// its last client left; 0, or not below SuspendTimeout: no idle tier.
	IdleAfter Duration `yaml:"idle_after"`
	// OffloadAfter drops a suspended compute's local data directory after
	// this long (the zero tier); 0: never.
	OffloadAfter Duration `yaml:"offload_after"`
	// Prewarm starts or thaws a compute shortly before a client is
	// predicted (arrivals at a regular interval); per branch through the
	// admin API.
	Prewarm bool `yaml:"prewarm"`
	// SuspendWithSessions is what clients that hold a compute for their
	// whole session (session mode, pinned) do to suspend_timeout: "wait"
	// keeps the compute running while they are connected; "disconnect"
	// suspends it once they have all been quiet that long, and tells them
	// why (57P01).
	SuspendWithSessions string   `yaml:"suspend_with_sessions"`
	WakeTimeout         Duration `yaml:"wake_timeout"`
	// MaxRunning caps running computes; 0 means no cap.
	MaxRunning int `yaml:"max_running"`
	// SharedBuffers is passed to PostgreSQL as shared_buffers.
	SharedBuffers string `yaml:"shared_buffers"`
	// MaxConnections is passed to PostgreSQL as max_connections.
	MaxConnections int `yaml:"max_connections"`
	// SharedPreloadLibraries is passed to PostgreSQL as
	// shared_preload_libraries: extensions that must be loaded at start.
	SharedPreloadLibraries string `yaml:"shared_preload_libraries"`
	// OSUser runs the computes when neonproxy runs as root (PostgreSQL
	// refuses root).
	OSUser string `yaml:"os_user"`
	// BreakerFailures consecutive start failures open a branch's breaker
	// for BreakerOpen.
	BreakerFailures int      `yaml:"breaker_failures"`
	BreakerOpen     Duration `yaml:"breaker_open"`
	// CacheBytes is the disk budget of local data directories, a cache of
	// the pagestore; 0: no limit.
	CacheBytes Bytes `yaml:"cache_bytes"`
	// SpareFiles empty files are kept made ahead of time, so that a cold
	// start renames them into place instead of creating each file.
	SpareFiles int `yaml:"spare_files"`
	// LocalCOW ("auto", "off"): a branch that reads just its parent's
	// image starts on an overlayfs mount over one shared copy of it.
	LocalCOW string `yaml:"local_cow"`
}

// Pagestore configures the copy-on-write page store.
type Pagestore struct {
	// GCInterval is how often a garbage collection pass runs; 0: only on
	// request (POST /v1/pagestore/gc) and after branch deletions. Run by
	// whoever holds the store: serve without Address, or `neonproxy
	// pagestore`.
	GCInterval Duration `yaml:"gc_interval"`
	// BlockCacheBytes is pebble's block cache (uncompressed blocks) in
	// whoever holds the store. A branch's first start reads its whole
	// image; with the parent's image in the cache, a burst of branches of
	// one parent reads no disk and decompresses nothing.
	BlockCacheBytes Bytes `yaml:"block_cache_bytes"`
	// Address is a standalone pagestore (`neonproxy pagestore`, host:port)
	// serve uses instead of its own <data_dir>/pagestore; empty: its own.
	Address string `yaml:"address"`
	// Listen is where `neonproxy pagestore` serves its HTTP API.
	Listen string `yaml:"listen"`
	// Token is the shared secret between serve and a standalone pagestore
	// (Authorization: Bearer); required when Listen is not loopback.
	Token string `yaml:"token"`
}

// Pool configures server-connection pooling.
type Pool struct {
	// Mode is the default pooling mode: session or transaction. A -pooler
	// suffix on the routed branch selects transaction mode either way.
	Mode string `yaml:"mode"`
	// DefaultPoolSize caps server connections per (branch, database, user).
	DefaultPoolSize int `yaml:"default_pool_size"`
	// MaxClientConn caps client connections overall.
	MaxClientConn int `yaml:"max_client_conn"`
	// MaxBranchConns caps server connections per branch; 0: no cap.
	MaxBranchConns int `yaml:"max_branch_conns"`
	// MaxBranchClientConn caps one branch's client connections on this
	// node, unless the branch sets its own (neonproxy branch set NAME
	// --max-client-conn N); 0: no cap.
	MaxBranchClientConn int `yaml:"max_branch_client_conn"`
	// QueryWaitTimeout bounds a client's wait for a server connection.
	QueryWaitTimeout Duration `yaml:"query_wait_timeout"`
	// ServerIdleTimeout closes server connections idle this long.
	ServerIdleTimeout Duration `yaml:"server_idle_timeout"`
	// ServerLifetime closes server connections this old when next idle.
	ServerLifetime Duration `yaml:"server_lifetime"`
	// AdminUsers may log in to the admin console (psql -d neonproxy)
	// besides the superuser postgres of the default branch.
	AdminUsers []string `yaml:"admin_users"`
}

// Walkeeper configures the WAL keepers (issue 5).
type Walkeeper struct {
	// ViaFrontDoor makes the keepers stream computes through this node's
	// front door (consul.node, else listen; TLS, SCRAM with Token) instead
	// of the computes' unix sockets: keepers on other machines need it.
	ViaFrontDoor bool `yaml:"via_front_door"`
	// Peers are the standalone keepers (host:port of their HTTP API) the
	// computes stream to, known to them as wk1, wk2, … in this order;
	// empty: one keeper embedded in serve.
	Peers []string `yaml:"peers"`
	// Quorum is how many of the peers must have flushed a commit before
	// it is acknowledged.
	Quorum int `yaml:"quorum"`
	// Listen is where `neonproxy walkeeper` serves its HTTP API.
	Listen string `yaml:"listen"`
	// Token is a shared secret: serve sends it to its peers, a standalone
	// keeper requires it (needed when Listen is not a loopback address).
	Token string `yaml:"token"`
	// Retention is how far back a branch can be created at an LSN or a
	// time: the images and WAL of that window are kept.
	Retention Duration `yaml:"retention"`
}

// Consul configures the distributed registry (issue 6).
type Consul struct {
	// Address is the Consul agent's HTTP API (host:port); empty: the
	// embedded single-node registry.
	Address string `yaml:"address"`
	// Node is this node's address as other nodes reach it, unique in the
	// cluster: the value of the branch locks it holds (default: listen).
	Node string `yaml:"node"`
	// Token is the Consul ACL token neonproxy sends (empty: the agent's
	// default token).
	Token string `yaml:"token"`
	// NodeCAFile is the PEM CA (or the shared certificate itself) the
	// nodes' front-door certificates (tls.cert_file) are checked against:
	// set, relayed clients and forwarded cancels travel between nodes over
	// TLS, verified against the host of the owner's consul.node. Empty:
	// plain TCP between nodes.
	NodeCAFile string `yaml:"node_ca_file"`
}

// Admin configures the admin API (admin_listen) and what reaches it.
type Admin struct {
	// Token, when set, is required on every admin API request but GET
	// /healthz ("Authorization: Bearer <token>"); required when
	// admin_listen is not a loopback address. The CLI sends it.
	Token string `yaml:"token"`
}

// Bootstrap configures the first start.
type Bootstrap struct {
	// Password of the superuser postgres in a new main branch; empty:
	// generate one and keep it in <data_dir>/credentials (mode 0600).
	Password string `yaml:"password"`
}

// Log configures zap.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"` // json | console
	// Connections logs one line per client connection when it ends
	// (branch, user, wake, duration, bytes, result), like PgBouncer's
	// log_disconnections. Default true.
	Connections bool `yaml:"connections"`
}

// Proxy holds front-door limits.
type Proxy struct {
	// StartupTimeout bounds the time from accept to authenticated
	// (TLS handshake, startup packet and SCRAM exchange; not the wake).
	StartupTimeout Duration `yaml:"startup_timeout"`
	// MaxStartupPacket bounds the startup packet size in bytes.
	MaxStartupPacket int `yaml:"max_startup_packet"`
	// MaxStartupParams bounds the number of startup parameters.
	MaxStartupParams int `yaml:"max_startup_params"`
	// AuthThrottle refuses authentication attempts from a client address
	// to a branch after failures, for a backoff doubling from 1s to 1h.
	AuthThrottle bool `yaml:"auth_throttle"`
}

// Config is the whole configuration.
type Config struct {
	// Roles are what this process runs (proxy, compute, pagestore,
	// walkeeper; see roles.go); empty: what the addresses imply.
	Roles         []string `yaml:"roles"`
	Listen        string   `yaml:"listen"`
	AdminListen   string   `yaml:"admin_listen"`
	HTTPListen    string   `yaml:"http_listen"`
	DataDir       string   `yaml:"data_dir"`
	DefaultBranch string   `yaml:"default_branch"`
	// ShutdownTimeout bounds how long SIGTERM waits for transactions in
	// flight before it closes their clients (and stops the computes).
	ShutdownTimeout Duration  `yaml:"shutdown_timeout"`
	TLS             TLS       `yaml:"tls"`
	Proxy           Proxy     `yaml:"proxy"`
	Compute         Compute   `yaml:"compute"`
	Pool            Pool      `yaml:"pool"`
	Pagestore       Pagestore `yaml:"pagestore"`
	Walkeeper       Walkeeper `yaml:"walkeeper"`
	Consul          Consul    `yaml:"consul"`
	Admin           Admin     `yaml:"admin"`
	HTTP            HTTP      `yaml:"http"`
	Branches        Branches  `yaml:"branches"`
	Bootstrap       Bootstrap `yaml:"bootstrap"`
	Log             Log       `yaml:"log"`
}

// HTTP configures http_listen: SQL over HTTP (POST /sql) and pgwire over
// WebSocket for serverless drivers.
type HTTP struct {
	// RequestTimeout bounds one POST /sql request (then 57014).
	RequestTimeout Duration `yaml:"request_timeout"`
	// MaxResponseBytes bounds a POST /sql response (then 54000).
	MaxResponseBytes Bytes `yaml:"max_response_bytes"`
}

// preloadRE is a list of library names: nothing a -c option could be
// tricked by.
var preloadRE = regexp.MustCompile(`^([A-Za-z0-9_-]+( *, *[A-Za-z0-9_-]+)*)?$`)

// Branches configures branch lifecycle work.
type Branches struct {
	// ReapInterval is how often the reaper looks for expired branches
	// (ttl / expires_at) besides at each expiry it knows of: it catches
	// expiries set through another node of a cluster.
	ReapInterval Duration `yaml:"reap_interval"`
}

// Default returns the documented defaults (see config.yaml).
func Default() Config {
	return Config{
		Listen:          "127.0.0.1:5432",
		AdminListen:     "127.0.0.1:8432",
		DataDir:         "./data",
		DefaultBranch:   "main",
		ShutdownTimeout: Duration(30 * time.Second),
		TLS:             TLS{SNISuffix: "localtest.me"},
		HTTP:            HTTP{RequestTimeout: Duration(30 * time.Second), MaxResponseBytes: Bytes(10 << 20)},
		Proxy: Proxy{
			StartupTimeout:   Duration(15 * time.Second),
			MaxStartupPacket: 10000,
			MaxStartupParams: 64,
			AuthThrottle:     true,
		},
		Compute: Compute{
			PostgresBinDir:      "/usr/lib/postgresql/15/bin",
			SuspendTimeout:      Duration(300 * time.Second),
			IdleAfter:           Duration(30 * time.Second),
			OffloadAfter:        Duration(time.Hour),
			Prewarm:             true,
			SuspendWithSessions: "wait",
			WakeTimeout:         Duration(30 * time.Second),
			SharedBuffers:       "16MB",
			MaxConnections:      100,
			OSUser:              "postgres",
			BreakerFailures:     3,
			BreakerOpen:         Duration(30 * time.Second),
			CacheBytes:          Bytes(10 << 30),
			SpareFiles:          10000,
			LocalCOW:            "auto",
		},
		Pagestore: Pagestore{GCInterval: Duration(time.Hour), BlockCacheBytes: Bytes(256 << 20), Listen: "127.0.0.1:7100"},
		Branches:  Branches{ReapInterval: Duration(10 * time.Second)},
		Pool: Pool{
			Mode: "session", DefaultPoolSize: 20, MaxClientConn: 10000,
			QueryWaitTimeout:  Duration(120 * time.Second),
			ServerIdleTimeout: Duration(600 * time.Second),
			ServerLifetime:    Duration(3600 * time.Second),
		},
		Walkeeper: Walkeeper{Quorum: 1, Retention: Duration(7 * 24 * time.Hour), Listen: "127.0.0.1:7000"},
		Log:       Log{Level: "info", Format: "json", Connections: true},
	}
}

// Load reads path (empty: defaults only), then applies environment
// overrides from environ (normally os.Environ()), then validates.
func Load(path string, environ []string) (Config, error) {
	cfg := Default()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("read config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		// An empty file decodes as io.EOF: it means "no keys", not an error.
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			return cfg, fmt.Errorf("parse %s: %w", path, err)
		}
	}
	if err := applyEnv(&cfg, environ); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// Validate checks values that would otherwise fail late and obscurely.
func (c *Config) Validate() error {
	errs := c.validateRoles()
	if loopback, err := httpapi.IsLoopback(c.AdminListen); err != nil {
		errs = append(errs, fmt.Errorf("admin_listen %q: %w", c.AdminListen, err))
	} else if !loopback && c.Admin.Token == "" {
		errs = append(errs, fmt.Errorf("admin_listen %s is not a loopback address: set admin.token (clients send it as Authorization: Bearer) or listen on 127.0.0.1", c.AdminListen))
	}
	if c.Listen == "" {
		errs = append(errs, errors.New("listen must not be empty"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir must not be empty"))
	}
	switch c.Pool.Mode {
	case "session", "transaction":
	default:
		errs = append(errs, fmt.Errorf("pool.mode %q: want session or transaction", c.Pool.Mode))
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		errs = append(errs, errors.New("tls.cert_file and tls.key_file must be set together"))
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, errors.New("shutdown_timeout must be >= 0"))
	}
	if c.Compute.IdleAfter < 0 {
		errs = append(errs, errors.New("compute.idle_after must be >= 0"))
	}
	if v := c.Compute.LocalCOW; v != "auto" && v != "off" {
		return fmt.Errorf("compute.local_cow: %q: want auto or off", v)
	}
	if w := c.Compute.SuspendWithSessions; w != "wait" && w != "disconnect" {
		errs = append(errs, fmt.Errorf("compute.suspend_with_sessions %q: want wait or disconnect", w))
	}
	if c.Compute.OffloadAfter < 0 {
		errs = append(errs, errors.New("compute.offload_after must be >= 0"))
	}
	if c.Compute.SuspendTimeout <= 0 {
		errs = append(errs, errors.New("compute.suspend_timeout must be > 0"))
	}
	if c.Compute.SpareFiles < 0 {
		errs = append(errs, errors.New("compute.spare_files must be >= 0"))
	}
	if c.Walkeeper.Retention < 0 {
		errs = append(errs, errors.New("walkeeper.retention must be >= 0"))
	}
	if n := max(len(c.Walkeeper.Peers), 1); c.Walkeeper.Quorum < 1 || c.Walkeeper.Quorum > n {
		errs = append(errs, fmt.Errorf("walkeeper.quorum %d: want 1 to %d (the number of walkeeper.peers, or 1 for the embedded keeper)", c.Walkeeper.Quorum, n))
	}
	if c.Walkeeper.ViaFrontDoor && (len(c.Walkeeper.Peers) == 0 || c.Walkeeper.Token == "") {
		errs = append(errs, errors.New("walkeeper.via_front_door needs walkeeper.peers and walkeeper.token (the keepers' password at the front door)"))
	}
	if !preloadRE.MatchString(c.Compute.SharedPreloadLibraries) {
		errs = append(errs, fmt.Errorf("compute.shared_preload_libraries %q: want comma-separated library names (letters, digits, _ and -)", c.Compute.SharedPreloadLibraries))
	}
	if c.Branches.ReapInterval <= 0 {
		errs = append(errs, errors.New("branches.reap_interval must be > 0"))
	}
	if c.Pagestore.BlockCacheBytes < 1<<20 {
		errs = append(errs, errors.New("pagestore.block_cache_bytes must be at least 1MiB"))
	}
	if c.Pagestore.GCInterval < 0 {
		errs = append(errs, errors.New("pagestore.gc_interval must be >= 0"))
	}
	if c.Compute.WakeTimeout <= 0 {
		errs = append(errs, errors.New("compute.wake_timeout must be > 0"))
	}
	if c.Compute.MaxRunning < 0 || c.Pool.MaxClientConn < 0 || c.Pool.MaxBranchConns < 0 || c.Pool.MaxBranchClientConn < 0 {
		errs = append(errs, errors.New("compute.max_running, pool.max_client_conn, pool.max_branch_conns and pool.max_branch_client_conn must be >= 0"))
	}
	if c.Pool.DefaultPoolSize < 1 {
		errs = append(errs, errors.New("pool.default_pool_size must be >= 1"))
	}
	if c.Pool.QueryWaitTimeout <= 0 || c.Pool.ServerIdleTimeout <= 0 || c.Pool.ServerLifetime <= 0 {
		errs = append(errs, errors.New("pool.query_wait_timeout, pool.server_idle_timeout and pool.server_lifetime must be > 0"))
	}
	if c.Proxy.MaxStartupPacket < 64 || c.Proxy.MaxStartupParams < 1 {
		errs = append(errs, errors.New("proxy.max_startup_packet must be >= 64 and proxy.max_startup_params >= 1"))
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		errs = append(errs, fmt.Errorf("log.format %q: want json or console", c.Log.Format))
	}
	return errors.Join(errs...)
}

// Diff lists the keys (dotted yaml paths, e.g. pool.default_pool_size)
// whose values differ between a and b, in file order.
func Diff(a, b Config) []string {
	var keys []string
	var walk func(a, b reflect.Value, prefix string)
	walk = func(a, b reflect.Value, prefix string) {
		t := a.Type()
		for i := 0; i < t.NumField(); i++ {
			tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			fa, fb := a.Field(i), b.Field(i)
			if fa.Kind() == reflect.Struct {
				walk(fa, fb, prefix+tag+".")
				continue
			}
			// An empty list and no list are the same setting.
			if fa.Kind() == reflect.Slice && fa.Len() == 0 && fb.Len() == 0 {
				continue
			}
			if !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
				keys = append(keys, prefix+tag)
			}
		}
	}
	walk(reflect.ValueOf(a), reflect.ValueOf(b), "")
	return keys
}

// applyEnv sets every leaf field whose NEONPROXY_<PATH> variable is present.
// The path is the field's yaml keys joined by "_" and upper-cased, so
// compute.suspend_timeout is NEONPROXY_COMPUTE_SUSPEND_TIMEOUT.
func applyEnv(cfg *Config, environ []string) error {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "NEONPROXY_") {
			env[k] = v
		}
	}
	if len(env) == 0 {
		return nil
	}
	return walkEnv(reflect.ValueOf(cfg).Elem(), "NEONPROXY", env)
}

var (
	durationType = reflect.TypeOf(Duration(0))
	bytesType    = reflect.TypeOf(Bytes(0))
)

func walkEnv(v reflect.Value, prefix string, env map[string]string) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		name := prefix + "_" + strings.ToUpper(tag)
		fv := v.Field(i)
		if f.Type.Kind() == reflect.Struct {
			if err := walkEnv(fv, name, env); err != nil {
				return err
			}
			continue
		}
		raw, ok := env[name]
		if !ok {
			continue
		}
		if err := setFromString(fv, raw); err != nil {
			return fmt.Errorf("env %s: %w", name, err)
		}
	}
	return nil
}

func setFromString(fv reflect.Value, raw string) error {
	switch {
	case fv.Type() == durationType:
		d, err := parseDuration(raw)
		if err != nil {
			return err
		}
		fv.Set(reflect.ValueOf(d))
	case fv.Type() == bytesType:
		b, err := parseBytes(raw)
		if err != nil {
			return err
		}
		fv.Set(reflect.ValueOf(b))
	case fv.Kind() == reflect.String:
		fv.SetString(raw)
	case fv.Kind() == reflect.Int:
		n, err := strconv.Atoi(strings.TrimSpace(raw))
		if err != nil {
			return fmt.Errorf("invalid integer %q", raw)
		}
		fv.SetInt(int64(n))
	case fv.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(raw))
		if err != nil {
			return fmt.Errorf("invalid boolean %q", raw)
		}
		fv.SetBool(b)
	case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.String:
		var parts []string
		for _, p := range strings.Split(raw, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		fv.Set(reflect.ValueOf(parts))
	default:
		return fmt.Errorf("unsupported field type %s", fv.Type())
	}
	return nil
}

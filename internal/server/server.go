// Package server wires neonproxy's parts together from a config.Config: the
// branch registry, the compute driver and manager, the front door and the
// admin API. cmd/neonproxy calls it for `serve`; integration tests start it
// in-process the same way.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/internal/httpapi"
	"github.com/neonproxy/neonproxy/internal/metrics"
	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/pagestore"
	"github.com/neonproxy/neonproxy/pool"
	"github.com/neonproxy/neonproxy/proxy"
	"github.com/neonproxy/neonproxy/router"
	"github.com/neonproxy/neonproxy/wake"
	"github.com/neonproxy/neonproxy/walkeeper"
)

// BootstrapBranch is the root branch created at first start.
const BootstrapBranch = "main"

// Options are knobs that are not part of the configuration file.
type Options struct {
	// NoSync makes initdb and the pagestore skip fsync (tests only).
	NoSync bool
	// ConfigPath is the file cfg was loaded from; the admin console's
	// RELOAD re-reads it. Empty: RELOAD is refused.
	ConfigPath string
}

// Server is a running neonproxy.
type Server struct {
	cfg      config.Config
	log      *zap.Logger
	Metrics  *metrics.Metrics
	Registry registry
	cluster  *router.ClusterNodes // Consul mode: this node's index
	owners   *router.ConsulOwners // Consul mode: branch locks
	Store    pagestore.Service
	Keeper   *walkeeper.Keeper // the embedded WAL keeper
	Computes *wake.Manager
	driver   *wake.PostgresDriver
	Proxy    *proxy.Server
	Pool     *pool.Pool
	password string
	// proxyRef publishes Proxy to compute-stop callbacks, which can run
	// (for adopted computes) before Proxy is set.
	proxyRef atomic.Pointer[proxy.Server]

	pgLn    net.Listener
	adminLn net.Listener
	admin   *http.Server
	// httpLn and httpSrv serve http_listen (nil when off).
	httpLn  net.Listener
	httpSrv *http.Server
	serveCh chan error

	tls *proxyTLS // the front door's certificate (re-read by Reload)
	// reloadMu serializes RELOADs; cfg is what is in effect.
	reloadMu   sync.Mutex
	configPath string

	// Background pagestore work (GC passes) runs under bgCtx and is
	// waited for before the store closes.
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup
	gcMu     sync.Mutex // one GC pass at a time
	// gcSoonMu: whether a gcSoon pass runs, and the reason for one more.
	gcSoonMu struct {
		sync.Mutex
		running bool
		again   string
	}
}

// New prepares a server: data directory, registry, bootstrap branch, TLS
// material, and adoption of computes a previous process left running. It
// does not listen yet; call Start.
func New(ctx context.Context, cfg config.Config, log *zap.Logger, opt Options) (*Server, error) {
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = dataDir
	if err := os.MkdirAll(dataDir, 0o711); err != nil {
		return nil, fmt.Errorf("create data_dir: %w", err)
	}
	s := &Server{cfg: cfg, log: log, Metrics: metrics.New(), serveCh: make(chan error, 3), configPath: opt.ConfigPath}
	raiseFileLimit(log, cfg.Pool.MaxClientConn)
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	var owners wake.Owners
	if cfg.Consul.Address != "" {
		// Branches in Consul KV, and a Consul lock per running compute.
		consul := router.Consul{Address: cfg.Consul.Address, Token: cfg.Consul.Token}
		node := frontDoorAddr(cfg)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		reg, err := router.OpenConsul(cctx, consul, "")
		cancel()
		if err != nil {
			return nil, fmt.Errorf("consul.address: %w", err)
		}
		s.Registry = reg
		jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		s.cluster, err = router.JoinCluster(jctx, consul, node)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("consul.address: %w", err)
		}
		co, err := router.NewConsulOwners(consul, "", node)
		if err != nil {
			return nil, fmt.Errorf("consul.address: %w", err)
		}
		s.owners = co
		owners = consulOwners{co}
		s.background(co.Watch)
		s.background(reg.Watch)
	} else if s.Registry, err = router.OpenEmbedded(filepath.Join(dataDir, "branches.json")); err != nil {
		return nil, err
	}
	if cfg.Pagestore.Address != "" {
		// A standalone pagestore (neonproxy pagestore) every node shares.
		s.Store, err = pagestore.NewClient(cfg.Pagestore.Address, pagestore.ClientOptions{
			Token: cfg.Pagestore.Token, Logger: log.Named("pagestore"), NoSync: opt.NoSync})
	} else {
		s.Store, err = pagestore.Open(pagestore.Options{
			Dir:        filepath.Join(dataDir, "pagestore"),
			NoSync:     opt.NoSync,
			Logger:     log.Named("pagestore"),
			Retention:  cfg.Walkeeper.Retention.D(),
			CacheBytes: int64(cfg.Pagestore.BlockCacheBytes),
		})
	}
	if err != nil {
		_ = s.Registry.Close()
		return nil, fmt.Errorf("open pagestore: %w", err)
	}
	s.Metrics.RegisterPagestore(func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, _ := s.Store.DiskUsage(ctx)
		return float64(n)
	})
	// Standalone keepers (walkeeper.peers) with their quorum, or one
	// embedded keeper, quorum 1: every commit waits for their fsync.
	var keepers []walkeeper.Service
	for _, addr := range cfg.Walkeeper.Peers {
		c, err := walkeeper.NewClient(addr)
		if err != nil {
			_ = s.Store.Close()
			_ = s.Registry.Close()
			return nil, fmt.Errorf("walkeeper.peers: %w", err)
		}
		keepers = append(keepers, c.WithToken(cfg.Walkeeper.Token))
	}
	if len(keepers) == 0 {
		s.Keeper, err = walkeeper.Open(walkeeper.Options{
			Dir:    filepath.Join(dataDir, "walkeeper"),
			NoSync: opt.NoSync,
			Logger: log.Named("walkeeper"),
		})
		if err != nil {
			_ = s.Store.Close()
			_ = s.Registry.Close()
			return nil, fmt.Errorf("open WAL keeper: %w", err)
		}
		keepers = []walkeeper.Service{s.Keeper}
	}
	var keeperFrontDoor string
	if cfg.Walkeeper.ViaFrontDoor {
		if keeperFrontDoor = frontDoorAddr(cfg); strings.HasSuffix(keeperFrontDoor, ":0") {
			_ = s.Store.Close()
			_ = s.Registry.Close()
			return nil, fmt.Errorf("walkeeper.via_front_door: the keepers need a fixed front-door port (listen or consul.node is %s)", keeperFrontDoor)
		}
	}
	drv, err := wake.NewPostgresDriver(wake.DriverOptions{
		DataDir:                filepath.Join(dataDir, "computes"),
		BinDir:                 cfg.Compute.PostgresBinDir,
		OSUser:                 cfg.Compute.OSUser,
		SharedBuffers:          cfg.Compute.SharedBuffers,
		MaxConnections:         cfg.Compute.MaxConnections,
		SharedPreloadLibraries: cfg.Compute.SharedPreloadLibraries,
		NoSync:                 opt.NoSync,
		Store:                  s.Store,
		Keepers:                keepers,
		KeeperQuorum:           cfg.Walkeeper.Quorum,
		KeeperFrontDoor:        keeperFrontDoor,
		CacheBytes:             int64(cfg.Compute.CacheBytes),
		SpareFiles:             cfg.Compute.SpareFiles,
		LocalCOW:               cfg.Compute.LocalCOW,
		Logger:                 log.Named("compute"),
	})
	if err != nil {
		_ = s.Keeper.Close()
		_ = s.Store.Close()
		_ = s.Registry.Close()
		return nil, err
	}
	s.driver = drv
	s.Metrics.RegisterBranchUsage(s.branchUsage)
	s.Metrics.RegisterWalkeeperLag(func() map[string]float64 {
		out := map[string]float64{}
		for b, lag := range drv.KeeperLag() {
			out[b] = float64(lag)
		}
		return out
	})
	s.Pool = pool.New(poolOptions(cfg.Pool))
	s.Metrics.RegisterPool(func() metrics.PoolCounts {
		st := s.Pool.Stats()
		return metrics.PoolCounts{Active: st.Active, Idle: st.Idle, Waiting: st.Waiting}
	})
	var managed wake.Driver = drv
	if owners != nil {
		managed = wake.OwnedDriver(drv, owners, log.Named("owner"))
	}
	s.Computes = wake.NewManager(managed, wake.Options{
		UsagePath:              filepath.Join(cfg.DataDir, "usage.json"),
		SuspendTimeout:         cfg.Compute.SuspendTimeout.D(),
		IdleAfter:              cfg.Compute.IdleAfter.D(),
		OffloadAfter:           cfg.Compute.OffloadAfter.D(),
		Prewarm:                cfg.Compute.Prewarm,
		DisconnectIdleSessions: cfg.Compute.SuspendWithSessions == "disconnect",
		WakeTimeout:            cfg.Compute.WakeTimeout.D(),
		MaxRunning:             cfg.Compute.MaxRunning,
		BreakerFailures:        cfg.Compute.BreakerFailures,
		BreakerOpen:            cfg.Compute.BreakerOpen.D(),
		Logger:                 log.Named("wake"),
		Metrics:                s.Metrics,
		// The proxy's verifier-lookup connections go first, so a suspend
		// leaves no "terminating connection" noise in the compute's log.
		BeforeStop: func(branch string) {
			if p := s.proxyRef.Load(); p != nil {
				p.ForgetBranch(branch)
			}
			s.Pool.CloseBranch(branch)
		},
	})
	if err := s.bootstrap(ctx); err != nil {
		s.closeEarly(ctx)
		return nil, err
	}
	branches, err := s.Registry.List(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(branches))
	for _, b := range branches {
		names = append(names, b.Name)
	}
	s.Computes.Recover(ctx, names)

	var tlsCfg = (*proxyTLS)(nil)
	if tlsCfg, err = loadTLS(cfg); err != nil {
		s.closeEarly(ctx)
		return nil, err
	}
	s.tls = tlsCfg
	nodeTLS, err := loadNodeTLS(cfg)
	if err != nil {
		s.closeEarly(ctx)
		return nil, err
	}
	var replication *proxy.ReplicationAccess
	if cfg.Walkeeper.ViaFrontDoor {
		if replication, err = keeperAccess(cfg.Walkeeper.Token, drv); err != nil {
			s.closeEarly(ctx)
			return nil, err
		}
	}
	popt := proxy.Options{
		Resolver: router.Resolver{
			SNISuffix:     cfg.TLS.SNISuffix,
			DefaultBranch: cfg.DefaultBranch,
			Exists: func(name string) bool {
				_, err := s.Registry.Get(context.Background(), name)
				return err == nil
			},
		},
		Branches:            s.Registry,
		Waker:               s.Computes,
		TLS:                 tlsCfg.config,
		RequireTLS:          cfg.TLS.Require,
		Relay:               cfg.Consul.Address != "",
		NodeTLS:             nodeTLS,
		Replication:         replication,
		Cluster:             s.proxyCluster(),
		Limits:              pgwire.Limits{MaxPacket: cfg.Proxy.MaxStartupPacket, MaxParams: cfg.Proxy.MaxStartupParams},
		StartupTimeout:      cfg.Proxy.StartupTimeout.D(),
		AuthThrottle:        cfg.Proxy.AuthThrottle,
		MaxClientConn:       cfg.Pool.MaxClientConn,
		MaxBranchClientConn: cfg.Pool.MaxBranchClientConn,
		Pool:                s.Pool,
		TransactionPooling:  cfg.Pool.Mode == "transaction",
		Logger:              log.Named("proxy"),
		LogConnections:      cfg.Log.Connections,
		Metrics:             s.Metrics,
		AdminUsers:          cfg.Pool.AdminUsers,
		Lister:              s.Registry,
		ComputeState:        func(branch string) string { return string(s.Computes.Status(branch).State) },
	}
	if opt.ConfigPath != "" {
		popt.Reload = s.reload
	}
	s.Proxy, err = proxy.New(popt)
	if err != nil {
		s.closeEarly(ctx)
		return nil, err
	}
	s.proxyRef.Store(s.Proxy)
	return s, nil
}

func poolOptions(p config.Pool) pool.Options {
	return pool.Options{
		PoolSize:          p.DefaultPoolSize,
		MaxBranchConns:    p.MaxBranchConns,
		QueryWaitTimeout:  p.QueryWaitTimeout.D(),
		ServerIdleTimeout: p.ServerIdleTimeout.D(),
		ServerLifetime:    p.ServerLifetime.D(),
	}
}

// reloadable are the keys RELOAD applies to the running server.
var reloadable = map[string]bool{
	"pool.default_pool_size": true, "pool.query_wait_timeout": true, "pool.server_idle_timeout": true,
	"pool.server_lifetime": true, "pool.max_branch_conns": true, "pool.admin_users": true,
	"pool.max_client_conn": true, "pool.max_branch_client_conn": true,
	"compute.wake_timeout": true, "compute.suspend_timeout": true, "compute.idle_after": true,
	"compute.offload_after": true, "compute.max_running": true, "shutdown_timeout": true,
}

// Reload is RELOAD for SIGHUP: the certificate files and the reloadable
// keys of the configuration file.
func (s *Server) Reload() (string, error) { return s.reload() }

// reload re-reads the configuration file (and the environment, as at
// start) for the admin console's RELOAD. It applies the reloadable keys and
// names the other changed keys, which need a restart.
func (s *Server) reload() (string, error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	// The certificate files are re-read in any case (rotation under the
	// same paths).
	var applied, restart []string
	if s.tls != nil {
		if err := s.tls.reload(); err != nil {
			return "", err
		}
		applied = append(applied, "tls certificate (re-read)")
	}
	if s.configPath == "" {
		s.log.Info("TLS certificate re-read (no configuration file to reload)")
		return strings.Join(applied, ", "), nil
	}
	cfg, err := config.Load(s.configPath, os.Environ())
	if err != nil {
		return "", err
	}
	if cfg.DataDir, err = filepath.Abs(cfg.DataDir); err != nil {
		return "", err
	}
	for _, k := range config.Diff(s.cfg, cfg) {
		if reloadable[k] {
			applied = append(applied, k)
		} else {
			restart = append(restart, k)
		}
	}
	mode := s.cfg.Pool.Mode
	s.cfg.Pool = cfg.Pool
	s.cfg.Pool.Mode = mode // needs a restart
	s.Pool.SetOptions(poolOptions(s.cfg.Pool))
	s.Proxy.SetAdminUsers(s.cfg.Pool.AdminUsers)
	s.Proxy.SetLimits(proxy.Limits{MaxClientConn: cfg.Pool.MaxClientConn, MaxBranchClientConn: cfg.Pool.MaxBranchClientConn})
	c := &s.cfg.Compute
	c.WakeTimeout, c.SuspendTimeout, c.IdleAfter = cfg.Compute.WakeTimeout, cfg.Compute.SuspendTimeout, cfg.Compute.IdleAfter
	c.OffloadAfter, c.MaxRunning = cfg.Compute.OffloadAfter, cfg.Compute.MaxRunning
	s.Computes.SetTimeouts(wake.Timeouts{
		SuspendTimeout: c.SuspendTimeout.D(), IdleAfter: c.IdleAfter.D(), OffloadAfter: c.OffloadAfter.D(),
		WakeTimeout: c.WakeTimeout.D(), MaxRunning: c.MaxRunning,
	})
	s.cfg.ShutdownTimeout = cfg.ShutdownTimeout
	s.log.Info("configuration reloaded", zap.Strings("applied", applied), zap.Strings("need_restart", restart))
	var notice []string
	if len(applied) > 0 {
		notice = append(notice, "applied: "+strings.Join(applied, ", "))
	}
	if len(restart) > 0 {
		notice = append(notice, "changed but not applied (restart neonproxy for them): "+strings.Join(restart, ", "))
	}
	return strings.Join(notice, "; "), nil
}

// bootstrap creates the main branch at first start, with the superuser
// password from bootstrap.password, else from <data_dir>/credentials, else
// a generated one that is then kept there (mode 0600).
func (s *Server) bootstrap(ctx context.Context) error {
	credPath := filepath.Join(s.cfg.DataDir, "credentials")
	pw := s.cfg.Bootstrap.Password
	if pw == "" {
		if b, err := os.ReadFile(credPath); err == nil {
			pw = parseCredentials(string(b))
		}
	}
	if _, err := s.Registry.Get(ctx, BootstrapBranch); err == nil {
		s.password = pw
		return nil
	} else if !errors.Is(err, router.ErrBranchNotFound) {
		return err
	}
	if pw == "" {
		var err error
		if pw, err = generatePassword(24); err != nil {
			return err
		}
		content := "# superuser of branch main, generated at first start\npostgres:" + pw + "\n"
		if err := os.WriteFile(credPath, []byte(content), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", credPath, err)
		}
	}
	s.log.Info("bootstrapping branch", zap.String("branch", BootstrapBranch))
	if err := s.Computes.Bootstrap(ctx, BootstrapBranch, pw); err != nil {
		return fmt.Errorf("bootstrap branch %s: %w", BootstrapBranch, err)
	}
	if err := s.Registry.Create(ctx, router.Branch{Name: BootstrapBranch, CreatedAt: time.Now().UTC()}); err != nil && !errors.Is(err, router.ErrBranchExists) {
		return err
	}
	s.password = pw
	return nil
}

func parseCredentials(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "postgres:"); ok {
			return v
		}
	}
	return ""
}

func generatePassword(n int) (string, error) {
	const alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	b := make([]byte, n)
	for i := range b {
		k, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			return "", err
		}
		b[i] = alphabet[k.Int64()]
	}
	return string(b), nil
}

// Start listens on listen and admin_listen and serves in the background.
func (s *Server) Start() error {
	var err error
	if s.pgLn, err = proxy.Listen(context.Background(), s.cfg.Listen); err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	if s.adminLn, err = net.Listen("tcp", s.cfg.AdminListen); err != nil {
		s.pgLn.Close()
		return fmt.Errorf("admin_listen %s: %w", s.cfg.AdminListen, err)
	}
	h := admin.NewHandlerWithOptions(s.Registry, computesAdapter{s}, s.Metrics, s.log.Named("admin"),
		admin.HandlerOptions{DefaultBranch: s.cfg.DefaultBranch, GC: s.gc})
	s.background(func(ctx context.Context) { h.RunReaper(ctx, s.cfg.Branches.ReapInterval.D()) })
	if s.cfg.Pagestore.Address == "" { // a standalone pagestore runs its own
		s.background(func(ctx context.Context) {
			pagestore.RunGC(ctx, s.Store, s.cfg.Pagestore.GCInterval.D(), s.log.Named("pagestore"))
		})
	}
	s.admin = &http.Server{Handler: httpapi.RequireToken(h, s.cfg.Admin.Token, "admin.token"), ReadHeaderTimeout: 10 * time.Second}
	if err := s.startHTTP(); err != nil {
		s.pgLn.Close()
		s.adminLn.Close()
		return err
	}
	go func() { s.serveCh <- s.Proxy.Serve(s.pgLn) }()
	go func() {
		err := s.admin.Serve(s.adminLn)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.serveCh <- err
	}()
	if s.cluster != nil {
		// The front door listens: Consul may check it now, and this
		// node's branches are freed as soon as it stops answering.
		ctx, cancel := context.WithTimeout(s.bgCtx, 30*time.Second)
		err := s.cluster.RegisterFrontDoor(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("consul: %w", err)
		}
		s.owners.TieTo(s.cluster.SessionChecks(), s.cluster.Service())
	}
	fields := []zap.Field{zap.String("listen", s.pgLn.Addr().String()),
		zap.String("admin_listen", s.adminLn.Addr().String()), zap.String("data_dir", s.cfg.DataDir)}
	if s.httpLn != nil {
		fields = append(fields, zap.String("http_listen", s.httpLn.Addr().String()))
	}
	s.log.Info("neonproxy ready", fields...)
	return nil
}

// startHTTP serves http_listen (SQL over HTTP, pgwire over WebSocket),
// over TLS with the front door's certificate when it has one.
func (s *Server) startHTTP() error {
	if s.cfg.HTTPListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("http_listen %s: %w", s.cfg.HTTPListen, err)
	}
	s.httpLn = ln
	h := s.Proxy.HTTPHandler(proxy.HTTPOptions{
		RequestTimeout:   s.cfg.HTTP.RequestTimeout.D(),
		MaxResponseBytes: int64(s.cfg.HTTP.MaxResponseBytes),
	})
	s.httpSrv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: zap.NewStdLog(s.log.Named("http"))}
	// TLS with the configured certificate. The generated development one
	// is not one fetch() or browsers trust: plain HTTP then.
	serveLn := ln
	if s.tls != nil && s.cfg.TLS.CertFile != "" {
		// HTTP/1.1 only (no h2 in NextProtos): WebSocket upgrades need it.
		serveLn = tls.NewListener(ln, s.tls.config)
	} else if lo, _ := httpapi.IsLoopback(s.cfg.HTTPListen); !lo {
		s.log.Warn("http_listen serves plain HTTP beyond loopback: connection strings and passwords cross the network in clear; set tls.cert_file and tls.key_file",
			zap.String("http_listen", s.cfg.HTTPListen))
	}
	go func() {
		err := s.httpSrv.Serve(serveLn)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.serveCh <- err
	}()
	return nil
}

// HTTPAddr is http_listen's address (nil when off).
func (s *Server) HTTPAddr() net.Addr {
	if s.httpLn == nil {
		return nil
	}
	return s.httpLn.Addr()
}

// Errors delivers a listener's fatal error.
func (s *Server) Errors() <-chan error { return s.serveCh }

// Addr is the front door's address.
func (s *Server) Addr() net.Addr { return s.pgLn.Addr() }

// AdminAddr is the admin API's address.
func (s *Server) AdminAddr() net.Addr { return s.adminLn.Addr() }

// Password is the bootstrap superuser password (empty when unknown: set
// in an earlier run through bootstrap.password and no longer configured).
func (s *Server) Password() string { return s.password }

// ConnString is a ready-to-paste URL for the superuser on branch main.
func (s *Server) ConnString() string {
	u := url.URL{Scheme: "postgres", Host: s.pgLn.Addr().String(), Path: "/" + BootstrapBranch}
	if s.password != "" {
		u.User = url.UserPassword("postgres", s.password)
	} else {
		u.User = url.User("postgres")
	}
	return u.String()
}

// Close ends client sessions, stops the admin API and stops every compute
// cleanly.
func (s *Server) Close(ctx context.Context) error {
	// Transactions in flight may finish (shutdown_timeout); clients
	// between transactions are told and closed at once.
	s.reloadMu.Lock()
	drain := s.cfg.ShutdownTimeout.D()
	s.reloadMu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, drain)
	var errs []error
	if s.httpSrv != nil {
		// /sql requests in flight finish first; WebSocket tunnels are
		// front-door sessions, drained next.
		if err := s.httpSrv.Shutdown(dctx); err != nil {
			errs = append(errs, fmt.Errorf("http_listen: %w", err))
		}
	}
	errs = append(errs, s.Proxy.Shutdown(dctx))
	cancel()
	if s.admin != nil {
		errs = append(errs, s.admin.Shutdown(ctx))
	}
	s.Pool.Close()
	// Computes first: their clean stops ingest into the store.
	errs = append(errs, s.Computes.Close(ctx))
	s.Computes.SaveUsage()
	s.driver.Close()
	s.stopBackground()
	if s.cluster != nil {
		// Without Consul the index is freed when the session expires.
		if err := s.cluster.Leave(); err != nil {
			s.log.Warn("leave the cluster", zap.Error(err))
		}
	}
	errs = append(errs, s.Keeper.Close(), s.Store.Close(), s.Registry.Close())
	return errors.Join(errs...)
}

// background runs f until the server closes; the store stays open until
// it returns.
func (s *Server) background(f func(ctx context.Context)) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		f(s.bgCtx)
	}()
}

func (s *Server) stopBackground() {
	s.bgCancel()
	s.bg.Wait()
}

// gc runs one pagestore garbage collection pass.
func (s *Server) gc(ctx context.Context) (admin.GCResult, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	st, err := s.Store.GC(ctx)
	if err != nil {
		return admin.GCResult{}, err
	}
	usage, err := s.Store.DiskUsage(ctx)
	if err != nil {
		return admin.GCResult{}, err
	}
	return admin.GCResult{VersionsDeleted: st.VersionsDeleted, BytesFreed: st.BytesFreed,
		DurationMS: float64(st.Duration.Microseconds()) / 1000, StoreBytes: usage}, nil
}

// gcSoon runs a pagestore GC pass in the background for why. Passes
// coalesce: while one runs, further requests make one more pass after it,
// not one each (an agent workload deletes branches several times a
// second, and a pass reads every timeline's versions).
func (s *Server) gcSoon(why string) {
	s.gcSoonMu.Lock()
	if s.gcSoonMu.running {
		s.gcSoonMu.again = why
		s.gcSoonMu.Unlock()
		return
	}
	s.gcSoonMu.running = true
	s.gcSoonMu.Unlock()
	s.background(func(ctx context.Context) {
		for {
			s.gcLogged(ctx, why)
			s.gcSoonMu.Lock()
			why, s.gcSoonMu.again = s.gcSoonMu.again, ""
			if why == "" || ctx.Err() != nil {
				s.gcSoonMu.running = false
				s.gcSoonMu.Unlock()
				return
			}
			s.gcSoonMu.Unlock()
		}
	})
}

func (s *Server) gcLogged(ctx context.Context, why string) {
	res, err := s.gc(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("pagestore gc", zap.String("trigger", why), zap.Error(err))
		}
		return
	}
	s.log.Info("pagestore gc", zap.String("trigger", why), zap.Int("versions_deleted", res.VersionsDeleted),
		zap.Int64("bytes_freed", res.BytesFreed), zap.Float64("duration_ms", res.DurationMS), zap.Uint64("store_bytes", res.StoreBytes))
}

// closeEarly undoes a New that failed after the computes were set up.
func (s *Server) closeEarly(ctx context.Context) {
	_ = s.Computes.Close(ctx)
	s.Computes.SaveUsage()
	s.driver.Close()
	s.stopBackground()
	_ = s.Keeper.Close()
	_ = s.Store.Close()
	_ = s.Registry.Close()
}

// Abandon simulates a crash for tests: it stops serving but leaves the
// computes running, as a killed neonproxy process would.
func (s *Server) Abandon(ctx context.Context) error {
	s.Computes.Detach()
	errs := []error{s.Proxy.Close(ctx)}
	s.Pool.Close()
	if s.admin != nil {
		errs = append(errs, s.admin.Close())
	}
	s.driver.Close()
	s.stopBackground()
	return errors.Join(append(errs, s.Keeper.Close(), s.Store.Close(), s.Registry.Close())...)
}

// computesAdapter presents wake.Manager to the admin API.
type computesAdapter struct{ s *Server }

var _ admin.Computes = computesAdapter{}

func (a computesAdapter) Status(branch string) admin.ComputeStatus {
	st := a.s.Computes.Status(branch)
	return admin.ComputeStatus{
		State: string(st.State), Tier: string(st.Tier), TierSince: st.TierSince, Clients: st.Clients, PID: st.PID,
		Prewarm:   prewarmJSON(a.s.Computes.Prewarm(branch)),
		StartedAt: st.StartedAt, LastUsed: st.LastUsed, LastError: st.LastError,
	}
}

func (a computesAdapter) Clone(ctx context.Context, parent, branch, lsn, at string) error {
	var p wake.Point
	if lsn != "" {
		l, err := pagestore.ParseLSN(lsn)
		if err != nil {
			return fmt.Errorf("%w: %v", admin.ErrInvalidTarget, err)
		}
		p.LSN = uint64(l)
	}
	if at != "" {
		t, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			return fmt.Errorf("%w: %v", admin.ErrInvalidTarget, err)
		}
		p.Time = t
	}
	err := a.s.Computes.Clone(ctx, parent, branch, p)
	if te := (*wake.TargetError)(nil); errors.As(err, &te) {
		return fmt.Errorf("%w: %v", admin.ErrInvalidTarget, err)
	}
	return err
}

func (a computesAdapter) Suspend(ctx context.Context, branch string) error {
	return a.s.Computes.Suspend(ctx, branch)
}

func (a computesAdapter) SetPrewarm(branch string, enabled bool) {
	a.s.Computes.SetPrewarm(branch, enabled)
}

func prewarmJSON(p wake.PrewarmInfo) admin.PrewarmJSON {
	return admin.PrewarmJSON{Enabled: p.Enabled, PeriodSeconds: p.Period.Seconds(), NextArrival: p.Next}
}

func (a computesAdapter) Delete(ctx context.Context, branch string) error {
	err := a.s.Computes.Delete(ctx, branch)
	a.s.Proxy.ForgetBranch(branch)
	if err == nil {
		// The timeline's own versions went with it; a pass also frees the
		// parent's versions that only the deleted branch point kept.
		a.s.gcSoon("branch deleted")
	}
	return err
}

func (a computesAdapter) EndSessions(branch, message, hint string) int {
	return a.s.Proxy.EndBranch(branch, &pgwire.Error{Code: pgwire.CodeAdminShutdown, Message: message, Hint: hint})
}

func (a computesAdapter) Clients(branch string) int { return a.s.Proxy.BranchClients(branch) }

func (a computesAdapter) Reset(ctx context.Context, parent, branch string) error {
	err := a.s.Computes.Reset(ctx, parent, branch)
	// Cached verifiers and startup parameters are the old timeline's.
	a.s.Proxy.ForgetBranch(branch)
	if err == nil {
		a.s.gcSoon("branch reset")
	}
	return err
}

// proxyCluster is the cluster numbering for the proxy (nil on one node:
// a nil *ClusterNodes must not become a non-nil interface).
func (s *Server) proxyCluster() proxy.Cluster {
	if s.cluster == nil {
		return nil
	}
	return s.cluster
}

// registry is a branch registry the server closes.
type registry interface {
	router.Registry
	Close() error
}

// consulOwners adapts router.ConsulOwners to wake.Owners.
type consulOwners struct{ o *router.ConsulOwners }

func (c consulOwners) Own(ctx context.Context, branch string) (wake.Ownership, error) {
	// Held by another node as far as the watched view says: no lock
	// attempt (a session and a write per client) needed to know it.
	if owner := c.o.HeldElsewhere(branch); owner != "" {
		return nil, &wake.OwnedElsewhereError{Owner: owner, Err: &router.OwnedError{Branch: branch, Owner: owner}}
	}
	own, err := c.o.TryAcquire(ctx, branch)
	var oe *router.OwnedError
	if errors.As(err, &oe) {
		return nil, &wake.OwnedElsewhereError{Owner: oe.Owner, Err: err}
	}
	return own, err
}

func (a computesAdapter) Storage(ctx context.Context, branch string) (admin.Storage, error) {
	st, err := a.s.Computes.Storage(ctx, branch)
	var keepers []admin.KeeperJSON
	for _, k := range st.WALKeepers {
		keepers = append(keepers, admin.KeeperJSON{Name: k.Name, State: k.State, FlushLagBytes: k.LagBytes})
	}
	return admin.Storage{ParentLSN: st.ParentLSN, LogicalBytes: st.LogicalBytes, UniqueBytes: st.UniqueBytes,
		LocalBytes: st.LocalBytes, Unstored: st.Unstored, Timeline: st.Timeline,
		WALKeeper: st.WALKeeper, WALKeeperLag: st.WALKeeperLagBytes, WALKeepers: keepers}, err
}

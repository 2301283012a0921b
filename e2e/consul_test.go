package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/internal/testconsul"
	"github.com/neonproxy/neonproxy/proxy"
	"github.com/neonproxy/neonproxy/router"
	"github.com/neonproxy/neonproxy/wake"
)

// TestConsulMode: serve with consul.address keeps its branches in Consul KV
// and runs a compute only while it holds the branch's Consul lock. A branch
// another node holds is refused with 57P03 naming that node; once that node
// lets go, the branch starts here. When this node loses a lock (its session
// ends), the compute is stopped at once and the next client starts it
// again.
func TestConsulMode(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	agent := testconsul.Start(t)
	e := newEnv(t, func(c *config.Config) {
		c.Consul.Address = agent.Addr
		c.Listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		c.Consul.Node = c.Listen
	})
	nodeA := e.cfg.Consul.Node
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cc, err := api.NewClient(&api.Config{Address: agent.Addr})
	if err != nil {
		t.Fatal(err)
	}
	api2 := &admin.Client{BaseURL: e.srv.AdminAddr().String()}
	if _, err := api2.CreateBranch(ctx, "dev", "main"); err != nil {
		t.Fatal(err)
	}
	keys, _, err := cc.KV().Keys(router.DefaultConsulPrefix, "/", nil)
	keys = slices.DeleteFunc(keys, func(k string) bool { return strings.HasSuffix(k, "/") }) // keys below a branch
	if err != nil || strings.Join(keys, ",") != router.DefaultConsulPrefix+"dev,"+router.DefaultConsulPrefix+"main" {
		t.Fatalf("branches in Consul KV: %v, %v", keys, err)
	}
	if e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT 1") != 1 {
		t.Fatal("query on main")
	}
	owner := func(branch string) string {
		p, _, err := cc.KV().Get(router.DefaultConsulPrefix+branch+"/compute", nil)
		if err != nil || p == nil || p.Session == "" {
			return ""
		}
		return string(p.Value)
	}
	if got := owner("main"); got != nodeA {
		t.Fatalf("main's lock holder = %q, want %s", got, nodeA)
	}
	// The holder registered the compute in Consul's catalog, healthy
	// while its front door answers.
	computes := func(branch string) []*api.ServiceEntry {
		entries, _, err := cc.Health().Service(router.ComputeService, branch, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		return entries
	}
	waitFor(t, "main's compute service to pass its check", func() bool { return len(computes("main")) == 1 })
	if s := computes("main")[0].Service; fmt.Sprintf("%s:%d", s.Address, s.Port) != nodeA || s.Meta["branch"] != "main" {
		t.Fatalf("main's compute service: %+v, want at %s", s, nodeA)
	}

	// Node B holds dev: clients of dev here are told where it runs.
	b, err := router.NewConsulOwners(router.Consul{Address: agent.Addr}, "", "node-b")
	if err != nil {
		t.Fatal(err)
	}
	held, err := b.TryAcquire(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	_, err = pgx.Connect(ctx, e.url("postgres", testPassword, "dev"))
	wantPgError(t, err, "57P03", "node-b")
	if err := held.Release(); err != nil {
		t.Fatal(err)
	}
	// The breaker may hold the failed start against dev for a moment.
	waitFor(t, "dev to start here once node B let go", func() bool {
		c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "dev"))
		if err != nil {
			return false
		}
		c.Close(ctx)
		return owner("dev") == nodeA
	})

	// This node loses main's lock (its session ends, as when Consul
	// declares it dead): the compute stops at once; the next client starts
	// it again under a new lock.
	p, _, err := cc.KV().Get(router.DefaultConsulPrefix+"main/compute", nil)
	if err != nil || p == nil {
		t.Fatal(err)
	}
	if _, err := cc.Session().Destroy(p.Session, nil); err != nil {
		t.Fatal(err)
	}
	e.waitState("main", wake.StateStopped)
	waitFor(t, "main's compute service to be deregistered", func() bool { return len(computes("main")) == 0 })
	if e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT 2") != 2 || owner("main") != nodeA {
		t.Fatal("main after the lost lock")
	}
	// Deleting a branch removes it from Consul.
	if err := api2.DeleteBranch(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if p, _, err := cc.KV().Get(router.DefaultConsulPrefix+"dev", nil); err != nil || p != nil {
		t.Fatalf("dev still in Consul: %+v, %v", p, err)
	}

	// Consul goes away: sessions go on, new clients of the running branch
	// are routed from what this node knows, and a branch that would need a
	// start is refused with the reason.
	if _, err := api2.CreateBranch(ctx, "asleep", "main"); err != nil {
		t.Fatal(err)
	}
	held2, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatal(err)
	}
	defer held2.Close(ctx)
	agent.Stop()
	var n int
	if err := held2.QueryRow(ctx, "SELECT count(*) FROM pg_class").Scan(&n); err != nil {
		t.Fatalf("a session of main with Consul down: %v", err)
	}
	if e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT 3") != 3 {
		t.Fatal("a new client of running main with Consul down")
	}
	_, err = pgx.Connect(ctx, e.url("postgres", testPassword, "asleep"))
	wantPgError(t, err, "57P03", "Consul")
	// Still running after a while without Consul (the lock is not given
	// up while Consul cannot say).
	time.Sleep(2 * time.Second)
	if st := e.srv.Computes.Status("main").State; st != wake.StateRunning {
		t.Fatalf("main is %s after 2 s without Consul", st)
	}
}

// TestConsulRelay: two nodes on one Consul (ACLs on). A runs main's compute; clients
// of main reaching B (by database name, by SNI over TLS, on the -pooler
// route) are relayed to A and served there; B runs nothing. A cancel for a
// query running through B works whether it is sent to B, to A or to a
// third node C (the key names the node that issued it).
func TestConsulRelay(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	// With ACLs on (deny by default): every call sends consul.token.
	const token = "6a1c2e7f-0d4b-4b8e-9c3a-5f2e8d7b1a40"
	agent := testconsul.StartWithACL(t, token)
	// One certificate for every node's front door, which is also what
	// the nodes check each other against: relayed clients and cancels
	// travel between nodes over TLS. A requires TLS, so a relay in plain
	// text would be refused.
	certDir := t.TempDir()
	cert, key, err := proxy.TLSFiles("", "", certDir, config.Default().TLS.SNISuffix)
	if err != nil {
		t.Fatal(err)
	}
	node := func(c *config.Config) {
		c.Consul.Address = agent.Addr
		c.Consul.Token = token
		c.Listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		c.Consul.Node = c.Listen
		c.TLS.CertFile, c.TLS.KeyFile, c.Consul.NodeCAFile = cert, key, cert
	}
	a := newEnv(t, func(c *config.Config) { node(c); c.TLS.Require = true })
	b := newEnv(t, node)
	c := newEnv(t, node)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if a.mustQueryInt(a.url("postgres", testPassword, "main", "sslmode", "require"), "SELECT 1") != 1 {
		t.Fatal("main on A")
	}
	cb, err := pgx.Connect(ctx, b.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatalf("main through B: %v", err)
	}
	defer cb.Close(ctx)
	if _, err := cb.Exec(ctx, "CREATE TABLE relayed (x int); INSERT INTO relayed VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	if a.mustQueryInt(a.url("postgres", testPassword, "main", "sslmode", "require"), "SELECT x FROM relayed") != 42 {
		t.Fatal("a row written through B is not on A's compute")
	}
	sni := parseConfig(t, b.url("postgres", testPassword, "postgres"))
	sni.TLSConfig = tlsConfig("main." + b.cfg.TLS.SNISuffix)
	for name, cfg := range map[string]*pgx.ConnConfig{
		"sni over tls":  sni,
		"pooler route":  parseConfig(t, b.url("postgres", testPassword, "main-pooler")),
		"database name": parseConfig(t, b.url("postgres", testPassword, "main.postgres")),
	} {
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("%s through B: %v", name, err)
		}
		var x int
		if err := c.QueryRow(ctx, "SELECT x FROM relayed").Scan(&x); err != nil || x != 42 {
			t.Fatalf("%s through B: %d, %v", name, x, err)
		}
		c.Close(ctx)
	}
	if st := b.srv.Computes.Status("main").State; st != wake.StateStopped {
		t.Fatalf("B's compute for main is %s; it should run nowhere but on A", st)
	}

	// A's lock session is tied to A's front-door health check ...
	cc, err := api.NewClient(&api.Config{Address: agent.Addr, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := cc.KV().Get(router.DefaultConsulPrefix+"main/compute", nil)
	if err != nil || p == nil || p.Session == "" {
		t.Fatalf("main's lock: %+v, %v", p, err)
	}
	se, _, err := cc.Session().Info(p.Session, nil)
	if err != nil || se == nil || !slices.ContainsFunc(se.Checks, func(c string) bool { return strings.HasSuffix(c, "-alive") }) {
		t.Fatalf("main's lock session is not tied to A's front-door check: %+v, %v", se, err)
	}

	// Cancels: sent to B (the node the client reached) and to A.
	for _, via := range []string{"B", "A", "C"} {
		done := make(chan error, 1)
		go func() {
			_, err := cb.Exec(ctx, "SELECT pg_sleep(60)")
			done <- err
		}()
		waitFor(t, "the sleep to run", func() bool {
			return a.mustQueryInt(a.url("postgres", testPassword, "main", "sslmode", "require"),
				"SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'") == 1
		})
		switch via {
		case "B":
			if err := cb.PgConn().CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
		case "A":
			sendCancel(t, a, cb.PgConn().PID(), cb.PgConn().SecretKey())
		case "C":
			sendCancel(t, c, cb.PgConn().PID(), cb.PgConn().SecretKey())
		}
		select {
		case err := <-done:
			wantPgError(t, err, "57014", "cancel")
		case <-time.After(20 * time.Second):
			t.Fatalf("cancel sent to %s did not cancel the query", via)
		}
	}

	// ... so when A's front door dies, Consul frees main at once (not
	// after the session TTL) and B's view learns it.
	cb.Close(ctx)
	if err := a.srv.Abandon(ctx); err != nil {
		t.Fatal(err)
	}
	a.srv = nil
	t0 := time.Now()
	waitFor(t, "main's lock to be freed", func() bool {
		p, _, err := cc.KV().Get(router.DefaultConsulPrefix+"main/compute", nil)
		return err == nil && (p == nil || p.Session == "")
	})
	t.Logf("A's front door closed: main's lock freed after %s (session TTL %s)", time.Since(t0).Round(time.Millisecond), router.SessionTTL)
	waitFor(t, "A's orphaned compute to be stopped", func() bool { return len(postgresProcesses(a.dir)) == 0 })
}

func parseConfig(t *testing.T, url string) *pgx.ConnConfig {
	t.Helper()
	c, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

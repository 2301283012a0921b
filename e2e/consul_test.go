package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/internal/testconsul"
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
		c.Consul.Node = "node-a"
	})
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
	if got := owner("main"); got != "node-a" {
		t.Fatalf("main's lock holder = %q, want node-a", got)
	}

	// Node B holds dev: clients of dev here are told where it runs.
	b, err := router.NewConsulOwners(agent.Addr, "", "node-b")
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
		return owner("dev") == "node-a"
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
	if e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT 2") != 2 || owner("main") != "node-a" {
		t.Fatal("main after the lost lock")
	}
	// Deleting a branch removes it from Consul.
	if err := api2.DeleteBranch(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if p, _, err := cc.KV().Get(router.DefaultConsulPrefix+"dev", nil); err != nil || p != nil {
		t.Fatalf("dev still in Consul: %+v, %v", p, err)
	}
}

package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/wake"
)

// TestWakeStorm: clients of many stopped branches arrive at once. Never
// more than compute.max_running computes run or start; the clients queue
// and are served, or get 57P03 with a retry hint once wake_timeout has
// passed; none hangs beyond it. (bench/ has the 200-branch figure.)
func TestWakeStorm(t *testing.T) {
	const (
		branches   = 32
		maxRunning = 3
		wakeTO     = 12 * time.Second
	)
	e := newEnv(t, func(c *config.Config) {
		c.Compute.MaxRunning = maxRunning
		c.Compute.WakeTimeout = config.Duration(wakeTO)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	api := &admin.Client{BaseURL: e.srv.AdminAddr().String()}
	for i := range branches {
		if _, err := api.CreateBranch(ctx, fmt.Sprintf("storm-%02d", i), "main"); err != nil {
			t.Fatal(err)
		}
	}

	// Sample the cap while the storm runs.
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			// One reading: the gauges, read one after the other, can add a
			// compute that stopped to one that started since.
			c := e.srv.Computes.Counts()
			if n := int64(c[wake.StateRunning] + c[wake.StateStarting]); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	var wg sync.WaitGroup
	var served, refused atomic.Int64
	var mu sync.Mutex
	var slowest time.Duration
	for i := range branches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			c, err := pgx.Connect(ctx, e.url("postgres", testPassword, fmt.Sprintf("storm-%02d", i)))
			if err == nil {
				var one int
				err = c.QueryRow(ctx, "select 1").Scan(&one)
				c.Close(ctx)
			}
			took := time.Since(t0)
			mu.Lock()
			slowest = max(slowest, took)
			mu.Unlock()
			switch {
			case err == nil:
				served.Add(1)
			default:
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "57P03" || !(strings.Contains(pe.Message, "maximum number of running computes") || strings.Contains(pe.Message, "within the wake timeout")) || !strings.Contains(pe.Hint, "Retry") {
					t.Errorf("branch %d after %s: want 57P03 (max_running or wake timeout) with a retry hint, got %v", i, took, err)
					return
				}
				refused.Add(1)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	t.Logf("%d branches, max_running %d, wake_timeout %s: %d served, %d refused (57P03); peak running+starting %d; slowest client %s",
		branches, maxRunning, wakeTO, served.Load(), refused.Load(), peak.Load(), slowest.Round(time.Millisecond))
	if p := peak.Load(); p > maxRunning {
		t.Errorf("peak of %d computes running or starting, above max_running %d", p, maxRunning)
	}
	if served.Load() < maxRunning {
		t.Errorf("only %d clients served", served.Load())
	}
	// wake_timeout bounds the queue wait; the rest is authentication and
	// a start already under way.
	if slowest > wakeTO+10*time.Second {
		t.Errorf("a client waited %s, wake_timeout is %s", slowest, wakeTO)
	}
	if q := counterValue(t, e, "neonproxy_compute_wakes_queued_total", "", ""); q == 0 {
		t.Error("no wake queued")
	}
}

// TestBranchAllowListAndLimits: a branch's allowed IP list (set through the
// admin API) refuses other addresses before authentication, naming the
// address; per-branch client caps (config default, branch override) answer
// 53300; SIGHUP's reload changes the caps and the compute timeouts.
func TestBranchAllowListAndLimits(t *testing.T) {
	e := newEnvWithFile(t, func(c *config.Config) { c.Pool.MaxBranchClientConn = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	api := &admin.Client{BaseURL: e.srv.AdminAddr().String()}
	connect := func(password string) (*pgx.Conn, error) {
		return pgx.Connect(ctx, e.url("postgres", password, "main"))
	}
	set := func(s admin.BranchSettings) admin.BranchJSON {
		t.Helper()
		b, err := api.UpdateBranch(ctx, "main", s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	list := func(ips ...string) *[]string { return &ips }
	n := func(v int) *int { return &v }

	// Allow list.
	if b := set(admin.BranchSettings{AllowedIPs: list("10.0.0.0/8", "2001:db8::/32")}); len(b.AllowedIPs) != 2 {
		t.Fatalf("allowed_ips = %v", b.AllowedIPs)
	}
	for _, pw := range []string{testPassword, "wrong"} { // checked before the password
		_, err := connect(pw)
		pe := wantPgError(t, err, "28000", `connection from IP address 127.0.0.1 is not allowed to reach branch "main"`)
		if !strings.Contains(pe.Hint, "neonproxy branch set main --allowed-ips 10.0.0.0/8,2001:db8::/32,127.0.0.1") {
			t.Errorf("hint %q", pe.Hint)
		}
	}
	if got := counterValue(t, e, "neonproxy_connections_total", "result", "ip_not_allowed"); got != 2 {
		t.Errorf("connections_total{ip_not_allowed} = %v", got)
	}
	var ae *admin.APIError
	if _, err := api.UpdateBranch(ctx, "main", admin.BranchSettings{AllowedIPs: list("10.0.0.0/33")}); !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Message, "10.0.0.0/33") {
		t.Fatalf("invalid CIDR: %v", err)
	}
	if b := set(admin.BranchSettings{AllowedIPs: list("10.0.0.0/8", "127.0.0.1")}); b.MaxClientConn != 0 || len(b.AllowedIPs) != 2 {
		t.Fatalf("after update: %+v", b)
	}
	c1, err := connect(testPassword)
	if err != nil {
		t.Fatalf("allowed address refused: %v", err)
	}
	defer c1.Close(ctx)

	// Per-branch cap: pool.max_branch_client_conn = 2.
	c2, err := connect(testPassword)
	if err != nil {
		t.Fatal(err)
	}
	_, err = connect(testPassword)
	wantPgError(t, err, "53300", `too many client connections for branch "main" (pool.max_branch_client_conn = 2)`)
	// The branch's own cap wins.
	set(admin.BranchSettings{MaxClientConn: n(3)})
	c3, err := connect(testPassword)
	if err != nil {
		t.Fatalf("under the branch's own cap: %v", err)
	}
	_, err = connect(testPassword)
	wantPgError(t, err, "53300", `too many client connections for branch "main" (the branch's max_client_conn = 3)`)
	// Places are given back when clients leave.
	c3.Close(ctx)
	c2.Close(ctx)
	waitFor(t, "the places of closed clients to come back", func() bool {
		c, err := connect(testPassword)
		if err == nil {
			c.Close(ctx)
		}
		return err == nil
	})

	// Reload: the config cap and the timeouts apply without a restart.
	set(admin.BranchSettings{MaxClientConn: n(0), AllowedIPs: list()})
	e.cfg.Pool.MaxBranchClientConn = 1
	e.cfg.Compute.WakeTimeout = config.Duration(45 * time.Second)
	e.cfg.Compute.MaxRunning = 7
	e.writeConfig()
	notice, err := e.srv.Reload()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"pool.max_branch_client_conn", "compute.wake_timeout", "compute.max_running"} {
		if !strings.Contains(notice, k) || strings.Contains(notice, "restart neonproxy for them: "+k) {
			t.Errorf("reload notice %q: want %s applied", notice, k)
		}
	}
	_, err = connect(testPassword) // c1 holds the only place now
	wantPgError(t, err, "53300", "(pool.max_branch_client_conn = 1)")
}

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
)

// TestWakeStorm: clients of many stopped branches arrive at once. Never
// more than compute.max_running computes run or start; the clients queue
// and are served, or get 57P03 with a retry hint once wake_timeout has
// passed; none hangs beyond it. (bench/ has the 200-branch figure.)
func TestWakeStorm(t *testing.T) {
	const (
		branches   = 32
		maxRunning = 3
		wakeTO     = 6 * time.Second
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
			running, _ := metricValue(t, e, "neonproxy_computes", "state", "running")
			starting, _ := metricValue(t, e, "neonproxy_computes", "state", "starting")
			if n := int64(running + starting); n > peak.Load() {
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

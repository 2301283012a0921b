package wake

import (
	"context"
	"errors"
	"testing"
	"time"
)

// slowStartDriver holds a start until its context ends or release is
// closed, then starts the real compute.
type slowStartDriver struct {
	*countingDriver
	release chan struct{}
}

func (d *slowStartDriver) Start(ctx context.Context, branch string, gen uint64) (Process, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-d.release:
	}
	return d.countingDriver.Start(ctx, branch, gen)
}

// TestStartAbandoned: a start whose every waiting client gave up is
// cancelled at once (its slot is free for the next start), does not count
// against the breaker, and a later client starts the compute normally.
func TestStartAbandoned(t *testing.T) {
	e := newEnv(t, Options{}, "s")
	d := &slowStartDriver{countingDriver: e.cd, release: make(chan struct{})}
	m := NewManager(d, Options{WakeTimeout: time.Minute, BreakerFailures: 2, Metrics: e.met, Logger: testLogger()})
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	for i := 0; i < 3; i++ { // more than BreakerFailures
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		t0 := time.Now()
		_, err := m.Acquire(ctx, "s")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("acquire %d: %v, want the client's deadline", i, err)
		}
		// Not the one-minute wake timeout: the start ends as its client leaves.
		waitFor(t, 10*time.Second, "the abandoned start to end", func() bool { return m.Status("s").State == StateStopped })
		if took := time.Since(t0); took > 10*time.Second {
			t.Fatalf("abandoned start took %v to end", took)
		}
	}
	if got := counter(t, e.met.ComputeStarts, "abandoned"); got != 3 {
		t.Errorf("starts abandoned: %v, want 3", got)
	}
	if st := m.Status("s"); st.LastError != "" {
		t.Errorf("last error %q after abandoned starts", st.LastError)
	}
	close(d.release)
	l, err := m.Acquire(ctxT(t), "s")
	if err != nil {
		t.Fatalf("acquire after abandoned starts (breaker must not be open): %v", err)
	}
	l.Release()
}

// TestHopelessWakeRefused: a wake that the starts queued ahead of it could
// not reach within its wake_timeout, at the recent start rate, is refused
// at once with a retry delay; one that can be reached queues as before.
func TestHopelessWakeRefused(t *testing.T) {
	e := newEnv(t, Options{MaxRunning: 1, WakeTimeout: 5 * time.Second}, "a", "b")
	ctx := ctxT(t)
	la, err := e.m.Acquire(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	e.m.mu.Lock()
	e.m.startEWMA = 10 * time.Second // longer than the wake timeout
	e.m.mu.Unlock()
	t0 := time.Now()
	_, err = e.m.Acquire(ctx, "b")
	var se *StartError
	if !errors.As(err, &se) || !errors.Is(err, ErrMaxRunning) || se.RetryAfter < 10*time.Second {
		t.Fatalf("acquire: %v, want ErrMaxRunning with a retry delay of 10s or more", err)
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("refused after %v: want at once, not after the wake timeout", took)
	}
	if got := value(t, e.met.ComputeWakesRefused); got != 1 {
		t.Errorf("wakes refused: %v, want 1", got)
	}
	e.m.mu.Lock()
	e.m.startEWMA = 100 * time.Millisecond
	e.m.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		l, err := e.m.Acquire(ctx, "b")
		if err == nil {
			l.Release()
		}
		done <- err
	}()
	waitFor(t, 10*time.Second, "b to queue", func() bool { return value(t, e.met.ComputeWakeQueued) == 1 })
	la.Release()
	if err := <-done; err != nil {
		t.Fatalf("a wake the queue can serve in time: %v", err)
	}
}

package pool

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// pipeDial returns connections over in-memory pipes; the pool only lends
// them, it never speaks the protocol on them in these tests.
func pipeDial(dialed *int, mu *sync.Mutex) DialFunc {
	return func(context.Context) (*Conn, error) {
		mu.Lock()
		*dialed++
		mu.Unlock()
		a, b := net.Pipe()
		go func() { <-time.After(time.Minute); b.Close() }()
		return &Conn{Net: a, Params: map[string]string{}}, nil
	}
}

func TestFIFOHandOff(t *testing.T) {
	p := New(Options{PoolSize: 1, QueryWaitTimeout: 5 * time.Second})
	defer p.Close()
	var mu sync.Mutex
	dialed := 0
	dial := pipeDial(&dialed, &mu)
	k := Key{Branch: "main", Database: "db", User: "u"}
	ctx := context.Background()
	first, _, err := p.Acquire(ctx, k, 1, dial)
	if err != nil {
		t.Fatal(err)
	}
	served := queueWaiters(t, p, k, dial, 3, 0)
	// A late arrival must not overtake the queue.
	p.Release(first, true)
	late, _, err := p.Acquire(ctx, k, 1, dial)
	if err != nil {
		t.Fatal(err)
	}
	p.Release(late, true)
	got := served()
	if len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 3 || dialed != 1 {
		t.Fatalf("order %v, dialed %d", got, dialed)
	}
}

func TestWaitTimeoutAndEpoch(t *testing.T) {
	p := New(Options{PoolSize: 1, QueryWaitTimeout: 100 * time.Millisecond})
	defer p.Close()
	var mu sync.Mutex
	dialed := 0
	dial := pipeDial(&dialed, &mu)
	k := Key{Branch: "main"}
	c, _, err := p.Acquire(context.Background(), k, 1, dial)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Acquire(context.Background(), k, 1, dial); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("want ErrWaitTimeout, got %v", err)
	}
	p.Release(c, true)
	// A new compute generation: the idle connection is not lent again.
	c2, _, err := p.Acquire(context.Background(), k, 2, dial)
	if err != nil || c2 == c || dialed != 2 {
		t.Fatalf("got the old-epoch connection (dialed %d, %v)", dialed, err)
	}
	p.Release(c2, false)
	if st := p.Stats(); st.Active != 0 || st.Idle != 0 {
		t.Fatalf("stats after discard: %+v", st)
	}
}

func TestStatementLRU(t *testing.T) {
	l := NewStatementLRU(2)
	if l.Add("a") != "" || l.Add("b") != "" {
		t.Fatal("early eviction")
	}
	l.Has("a") // a is now the most recent
	if ev := l.Add("c"); ev != "b" {
		t.Fatalf("evicted %q, want b", ev)
	}
	if !l.Has("a") || l.Has("b") || !l.Has("c") {
		t.Fatal("wrong contents")
	}
	l.Clear()
	if l.Len() != 0 || l.Has("a") {
		t.Fatal("not cleared")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFairUnderChurn: clients that give a connection back and ask again at
// once do not starve the others waiting.
func TestFairUnderChurn(t *testing.T) {
	p := New(Options{PoolSize: 1, QueryWaitTimeout: 2 * time.Second})
	defer p.Close()
	var mu sync.Mutex
	dialed := 0
	dial := pipeDial(&dialed, &mu)
	k := Key{Branch: "main"}
	const clients = 8
	turns := make([]int, clients)
	stop := time.Now().Add(500 * time.Millisecond)
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for time.Now().Before(stop) {
				c, _, err := p.Acquire(context.Background(), k, 1, dial)
				if err != nil {
					t.Errorf("client %d: %v", i, err)
					return
				}
				turns[i]++
				time.Sleep(100 * time.Microsecond)
				p.Release(c, true)
			}
		}(i)
	}
	wg.Wait()
	for i, n := range turns {
		if n == 0 {
			t.Fatalf("client %d starved: turns %v", i, turns)
		}
	}
}

// TestPauseResume: a paused branch lends nothing (idle or new) while other
// branches go on; waiters time out as usual; RESUME serves them in order;
// connections lent before the pause are untouched.
func TestPauseResume(t *testing.T) {
	p := New(Options{PoolSize: 2, QueryWaitTimeout: 5 * time.Second})
	defer p.Close()
	var mu sync.Mutex
	dialed := 0
	dial := pipeDial(&dialed, &mu)
	k := Key{Branch: "main", Database: "db", User: "u"}
	ctx := context.Background()
	held, _, err := p.Acquire(ctx, k, 1, dial)
	if err != nil {
		t.Fatal(err)
	}
	idle, _, err := p.Acquire(ctx, k, 1, dial)
	if err != nil {
		t.Fatal(err)
	}
	p.Release(idle, true)

	p.Pause("main")
	if !p.Paused("main") || p.Paused("dev") {
		t.Fatal("Paused")
	}
	// Another branch is not affected.
	other, _, err := p.Acquire(ctx, Key{Branch: "dev"}, 1, dial)
	if err != nil {
		t.Fatal(err)
	}
	p.Release(other, true)
	// A short wait ends in ErrWaitTimeout although a connection is idle.
	sctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, _, err := p.Acquire(sctx, k, 1, dial); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("paused Acquire: %v", err)
	}
	cancel()
	served := queueWaiters(t, p, k, dial, 3, 10*time.Millisecond)
	// Giving back the held connection does not hand it to a waiter.
	p.Release(held, true)
	time.Sleep(20 * time.Millisecond)
	if st := p.Stats(); st.Waiting != 3 || st.Idle != 3 || st.Active != 0 {
		t.Fatalf("paused stats %+v", st)
	}
	p.Resume("main")
	got := served()
	// The two idle connections go to the first two waiters, the third
	// waits for one of them.
	if len(got) != 3 || got[2] != 3 {
		t.Fatalf("order %v", got)
	}
	if dialed != 3 {
		t.Fatalf("dialed %d, want 3 (main 2, dev 1)", dialed)
	}
}

func TestConnsAndSetOptions(t *testing.T) {
	p := New(Options{PoolSize: 1, QueryWaitTimeout: 5 * time.Second})
	defer p.Close()
	var mu sync.Mutex
	dialed := 0
	dial := pipeDial(&dialed, &mu)
	k := Key{Branch: "main", Database: "db", User: "u"}
	ctx := context.Background()
	a, _, err := p.Acquire(ctx, k, 1, dial)
	if err != nil {
		t.Fatal(err)
	}
	a.PID = 42
	a.Prepared.Add("s1")
	got := make(chan *Conn, 1)
	go func() {
		c, _, err := p.Acquire(ctx, k, 1, dial)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })
	// A larger pool lets the waiter dial at once.
	p.SetOptions(Options{PoolSize: 2, QueryWaitTimeout: time.Second})
	b := <-got
	if o := p.Options(); o.PoolSize != 2 || o.QueryWaitTimeout != time.Second || o.MaxPrepared != 200 {
		t.Fatalf("options %+v", o)
	}
	p.Release(b, true)
	cs := p.Conns()
	if len(cs) != 2 || cs[0].State != "active" || cs[0].PID != 42 || cs[0].Prepared != 1 || cs[1].State != "idle" {
		t.Fatalf("conns %+v", cs)
	}
	p.Release(a, false)
	if cs := p.Conns(); len(cs) != 1 || cs[0].State != "idle" {
		t.Fatalf("conns after close %+v", cs)
	}
}

// queueWaiters starts n clients that Acquire k in a known order (each is
// queued before the next starts), hold their connection for hold and give
// it back. served waits for them and returns the order they were served in.
func queueWaiters(t *testing.T, p *Pool, k Key, dial DialFunc, n int, hold time.Duration) (served func() []int) {
	t.Helper()
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, _, err := p.Acquire(context.Background(), k, 1, dial)
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			time.Sleep(hold)
			p.Release(c, true)
		}(i)
		waitFor(t, func() bool { return p.Stats().Waiting == i })
	}
	return func() []int {
		wg.Wait()
		close(order)
		var got []int
		for i := range order {
			got = append(got, i)
		}
		return got
	}
}

// TestWaitExpiry: the key's one expiry timer ends each wait at its own
// deadline (never before), a RELOAD that shortens the timeout applies to
// a later waiter even while an earlier one still waits, a cancelled wait
// leaves the queue, and the waiter still queued is then served.
func TestWaitExpiry(t *testing.T) {
	const timeout = 150 * time.Millisecond
	p := New(Options{PoolSize: 1, QueryWaitTimeout: timeout})
	defer p.Close()
	var mu sync.Mutex
	dialed := 0
	dial := pipeDial(&dialed, &mu)
	k := Key{Branch: "main"}
	held, _, err := p.Acquire(context.Background(), k, 1, dial)
	if err != nil {
		t.Fatal(err)
	}
	// Staggered waiters: each must wait out its own full timeout.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	waited := make([]time.Duration, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			_, _, errs[i] = p.Acquire(context.Background(), k, 1, dial)
			waited[i] = time.Since(t0)
		}()
		time.Sleep(40 * time.Millisecond)
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, ErrWaitTimeout) || waited[i] < timeout {
			t.Fatalf("waiter %d: %v after %v, want ErrWaitTimeout after ≥ %v", i, err, waited[i], timeout)
		}
	}

	// A long wait, then a RELOAD to a short timeout: the next waiter ends
	// first, while the long one still waits.
	p.SetOptions(Options{PoolSize: 1, QueryWaitTimeout: time.Hour})
	long := make(chan error, 1)
	go func() {
		c, _, err := p.Acquire(context.Background(), k, 1, dial)
		if err == nil {
			p.Release(c, true)
		}
		long <- err
	}()
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })
	p.SetOptions(Options{PoolSize: 1, QueryWaitTimeout: timeout})
	if _, _, err := p.Acquire(context.Background(), k, 1, dial); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("short waiter: %v, want ErrWaitTimeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancelled := make(chan error, 1)
	go func() {
		_, _, err := p.Acquire(ctx, k, 1, dial)
		cancelled <- err
	}()
	waitFor(t, func() bool { return p.Stats().Waiting == 2 })
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	select {
	case err := <-long:
		t.Fatalf("the long waiter ended early: %v", err)
	default:
	}
	if st := p.Stats(); st.Waiting != 1 {
		t.Fatalf("waiting %d, want 1", st.Waiting)
	}
	p.Release(held, true)
	if err := <-long; err != nil {
		t.Fatalf("long waiter: %v", err)
	}
	if st := p.Stats(); st.Waiting != 0 || st.Active != 0 || st.Idle != 1 || dialed != 1 {
		t.Fatalf("stats at the end: %+v, dialed %d", st, dialed)
	}
}

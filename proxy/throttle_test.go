package proxy

import (
	"net/netip"
	"testing"
	"time"
)

func TestAuthThrottle(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	th := newAuthThrottle(2)
	th.now = func() time.Time { return now }
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	step := func(d time.Duration) { now = now.Add(d) }

	if w := th.check(a, "main"); w != 0 {
		t.Fatalf("fresh address throttled for %s", w)
	}
	// Backoff doubles: 1s, 2s, 4s, ...
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
		if got := th.failed(a, "main"); got != want {
			t.Fatalf("failure %d: backoff %s, want %s", i+1, got, want)
		}
		if w := th.check(a, "main"); w != want {
			t.Fatalf("failure %d: refused for %s, want %s", i+1, w, want)
		}
		step(want)
		if w := th.check(a, "main"); w != 0 {
			t.Fatalf("failure %d: still refused %s after the backoff", i+1, w)
		}
	}
	// Per branch and per address.
	if w := th.check(a, "dev"); w != 0 {
		t.Fatalf("another branch throttled: %s", w)
	}
	if w := th.check(b, "main"); w != 0 {
		t.Fatalf("another address throttled: %s", w)
	}
	// Capped at an hour.
	for range 30 {
		th.failed(a, "main")
	}
	if w := th.check(a, "main"); w != throttleMax {
		t.Fatalf("after 34 failures refused for %s, want %s", w, throttleMax)
	}
	// Success resets.
	th.succeeded(a, "main")
	if w := th.check(a, "main"); w != 0 {
		t.Fatalf("after a success refused for %s", w)
	}
	// Bounded: the least recently used address is forgotten.
	th.failed(a, "main")
	th.failed(b, "main")
	th.failed(c, "main")
	if w := th.check(a, "main"); w != 0 {
		t.Fatalf("the oldest of 3 entries in an LRU of 2 is still there (%s)", w)
	}
	if w := th.check(c, "main"); w != time.Second {
		t.Fatalf("newest entry: %s", w)
	}
}

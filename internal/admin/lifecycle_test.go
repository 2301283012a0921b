package admin

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/neonproxy/neonproxy/router"
)

func TestParseTTL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"24h", 24 * time.Hour, false},
		{"90m", 90 * time.Minute, false},
		{"7d", 7 * 24 * time.Hour, false},
		{"1h30m", 90 * time.Minute, false},
		{"0s", 0, true},
		{"-1h", 0, true},
		{"d", 0, true},
		{"1.5d", 0, true},
		{"99999d", 0, true},
		{"soon", 0, true},
		{"", 0, true},
	} {
		got, err := ParseTTL(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseTTL(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestCreateWithExpiry(t *testing.T) {
	f := newFixture(t)
	before := time.Now()
	resp, body := f.do(t, "POST", "/v1/branches", `{"name":"exp-1","ttl":"2h","expire_cascade":true}`)
	if resp.StatusCode != 201 {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	var got BranchJSON
	mustJSON(t, body, &got)
	if got.ExpiresAt == nil || got.ExpiresAt.Before(before.Add(2*time.Hour-time.Second)) || got.ExpiresAt.After(time.Now().Add(2*time.Hour)) || !got.ExpireCascade {
		t.Fatalf("expires_at = %v, cascade %v; want about now+2h, true", got.ExpiresAt, got.ExpireCascade)
	}
	at := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if resp, body := f.do(t, "POST", "/v1/branches", `{"name":"exp-2","expires_at":"`+at+`"}`); resp.StatusCode != 201 || !strings.Contains(string(body), `"expires_at":"`+at) {
		t.Fatalf("create with expires_at: %d %s", resp.StatusCode, body)
	}
	if _, body := f.do(t, "GET", "/v1/branches/dev", ""); !strings.Contains(string(body), `"expires_at":null`) {
		t.Errorf("a branch without expiry: want expires_at null, got %s", body)
	}
	for _, tc := range []struct{ body, want string }{
		{`{"name":"x1","ttl":"2h","expires_at":"` + at + `"}`, "not both"},
		{`{"name":"x2","ttl":"forever"}`, "want a positive duration"},
		{`{"name":"x3","expires_at":"2001-01-01T00:00:00Z"}`, "not in the future"},
		{`{"name":"x4","expires_at":"tomorrow"}`, "RFC 3339"},
	} {
		resp, body := f.do(t, "POST", "/v1/branches", tc.body)
		if resp.StatusCode != 400 || !strings.Contains(string(body), tc.want) {
			t.Errorf("%s: %d %s; want 400 with %q", tc.body, resp.StatusCode, body, tc.want)
		}
	}
	// PATCH extends, then clears the expiry.
	if resp, body := f.do(t, "PATCH", "/v1/branches/exp-2", `{"ttl":"48h"}`); resp.StatusCode != 200 {
		t.Fatalf("patch ttl: %d %s", resp.StatusCode, body)
	}
	b, _ := f.reg.Get(context.Background(), "exp-2")
	if d := time.Until(b.ExpiresAt); d < 47*time.Hour || d > 48*time.Hour {
		t.Errorf("after PATCH ttl 48h the branch expires in %v", d)
	}
	if resp, body := f.do(t, "PATCH", "/v1/branches/exp-2", `{"ttl":""}`); resp.StatusCode != 200 || !strings.Contains(string(body), `"expires_at":null`) {
		t.Fatalf("patch clearing the expiry: %d %s", resp.StatusCode, body)
	}
	if resp, body := f.do(t, "PATCH", "/v1/branches/main", `{"ttl":"1h"}`); resp.StatusCode != 409 || !strings.Contains(string(body), "cannot expire") {
		t.Errorf("expiry on the default branch: %d %s; want 409", resp.StatusCode, body)
	}
}

// setExpiry makes name expire at at, behind the API's back (the API
// refuses past expiries).
func (f *fixture) setExpiry(t *testing.T, name string, at time.Time, cascade bool) {
	t.Helper()
	if _, err := f.reg.Update(context.Background(), name, func(b *router.Branch) error {
		b.ExpiresAt, b.ExpireCascade = at, cascade
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestReaper(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, b := range []struct{ name, parent string }{{"p", "main"}, {"c1", "p"}, {"c2", "p"}, {"q", "main"}, {"q1", "q"}, {"r", "main"}, {"r1", "r"}} {
		if resp, body := f.do(t, "POST", "/v1/branches", `{"name":"`+b.name+`","parent":"`+b.parent+`"}`); resp.StatusCode != 201 {
			t.Fatalf("create %s: %d %s", b.name, resp.StatusCode, body)
		}
	}
	past := time.Now().Add(-time.Minute)
	// p and both its children expired: children first, then p, in one pass.
	f.setExpiry(t, "p", past, false)
	f.setExpiry(t, "c1", past, false)
	f.setExpiry(t, "c2", past, false)
	// q expired, its child did not, no cascade: q waits.
	f.setExpiry(t, "q", past, false)
	// r expired with expire_cascade: r1 goes with it.
	f.setExpiry(t, "r", past, true)
	// dev expires later.
	later := time.Now().Add(time.Hour)
	f.setExpiry(t, "dev", later, false)
	f.comp.mu.Lock()
	f.comp.clients["c1"] = 3
	f.comp.mu.Unlock()

	res := f.h.Reap(ctx, time.Now())
	slices.Sort(res.Deleted)
	if want := []string{"c1", "c2", "p", "r"}; !slices.Equal(res.Deleted, want) {
		t.Errorf("deleted %v, want %v", res.Deleted, want)
	}
	if want := []string{"q"}; !slices.Equal(res.Waiting, want) {
		t.Errorf("waiting %v, want %v", res.Waiting, want)
	}
	if !res.Next.Equal(later) {
		t.Errorf("next expiry %v, want %v", res.Next, later)
	}
	if got, want := f.names(t), []string{"dev", "main", "q", "q1"}; !slices.Equal(got, want) {
		t.Errorf("branches left %v, want %v", got, want)
	}
	calls := f.comp.Calls()
	if i, j := slices.Index(calls, "delete c1"), slices.Index(calls, "delete p"); i < 0 || j < i {
		t.Errorf("calls %v: want delete c1 before delete p", calls)
	}
	f.comp.mu.Lock()
	msg, msgR1 := f.comp.ended["c1"], f.comp.ended["r1"]
	f.comp.mu.Unlock()
	if !strings.Contains(msg, `branch "c1" expired at `+past.UTC().Format(time.RFC3339)) {
		t.Errorf("c1's clients were told %q", msg)
	}
	if !strings.Contains(msgR1, `its ancestor "r" expired`) {
		t.Errorf("r1's clients were told %q", msgR1)
	}
	if got := counter(t, f.m.BranchesExpired.WithLabelValues("deleted")); got != 4 {
		t.Errorf("expired deleted metric = %v, want 4", got)
	}
	// Said once while it waits.
	f.h.Reap(ctx, time.Now())
	if got := counter(t, f.m.BranchesExpired.WithLabelValues("waiting")); got != 1 {
		t.Errorf("expired waiting metric = %v, want 1", got)
	}
	// Its child goes: q goes at the next pass.
	if resp, body := f.do(t, "DELETE", "/v1/branches/q1", ""); resp.StatusCode != 204 {
		t.Fatalf("delete q1: %d %s", resp.StatusCode, body)
	}
	if res := f.h.Reap(ctx, time.Now()); !slices.Equal(res.Deleted, []string{"q"}) {
		t.Errorf("after its child went: deleted %v, want [q]", res.Deleted)
	}
}

// RunReaper deletes a branch at its expiry, without waiting for its
// interval.
func TestRunReaperAtExpiry(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.h.RunReaper(ctx, time.Hour); close(done) }()
	defer func() { cancel(); <-done }()
	if resp, body := f.do(t, "POST", "/v1/branches", `{"name":"short","ttl":"300ms"}`); resp.StatusCode != 201 {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	deadline := time.Now().Add(20 * time.Second)
	for slices.Contains(f.names(t), "short") {
		if time.Now().After(deadline) {
			t.Fatal("the branch still exists 20 s after its 300ms ttl (reaper interval 1h)")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestReset(t *testing.T) {
	f := newFixture(t)
	if resp, body := f.do(t, "POST", "/v1/branches/main/reset", ""); resp.StatusCode != 409 || !strings.Contains(string(body), "no parent") {
		t.Errorf("reset main: %d %s; want 409 no parent", resp.StatusCode, body)
	}
	if resp, body := f.do(t, "POST", "/v1/branches/nope/reset", ""); resp.StatusCode != 404 {
		t.Errorf("reset of an unknown branch: %d %s; want 404", resp.StatusCode, body)
	}
	f.comp.mu.Lock()
	f.comp.clients["dev"] = 2
	f.comp.mu.Unlock()
	// wait=true with clients that stay: 409 after the timeout, no reset.
	resp, body := f.do(t, "POST", "/v1/branches/dev/reset?wait=true&timeout=200ms", "")
	if resp.StatusCode != 409 || !strings.Contains(string(body), "still has 2 client connection(s)") {
		t.Errorf("reset with wait: %d %s; want 409", resp.StatusCode, body)
	}
	if slices.Contains(f.comp.Calls(), "reset main dev") {
		t.Fatal("reset ran although the clients stayed")
	}
	// wait=true: the reset happens once they leave.
	go func() {
		time.Sleep(150 * time.Millisecond)
		f.comp.mu.Lock()
		f.comp.clients["dev"] = 0
		f.comp.mu.Unlock()
	}()
	if resp, body := f.do(t, "POST", "/v1/branches/dev/reset?wait=true", ""); resp.StatusCode != 200 {
		t.Fatalf("reset with wait: %d %s", resp.StatusCode, body)
	}
	// Without wait the clients are disconnected with the reason.
	f.comp.mu.Lock()
	f.comp.clients["dev"] = 1
	f.comp.mu.Unlock()
	resp, body = f.do(t, "POST", "/v1/branches/dev/reset", "")
	if resp.StatusCode != 200 {
		t.Fatalf("reset: %d %s", resp.StatusCode, body)
	}
	var got BranchJSON
	mustJSON(t, body, &got)
	if got.ResetAt == nil || time.Since(*got.ResetAt) > time.Minute {
		t.Errorf("reset_at = %v", got.ResetAt)
	}
	f.comp.mu.Lock()
	msg := f.comp.ended["dev"]
	f.comp.mu.Unlock()
	if !strings.Contains(msg, `branch "dev" was reset to the latest state of its parent "main"`) {
		t.Errorf("clients were told %q", msg)
	}
	if n := strings.Count(strings.Join(f.comp.Calls(), "\n"), "reset main dev"); n != 2 {
		t.Errorf("%d resets, want 2: %v", n, f.comp.Calls())
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestDiffRoute(t *testing.T) {
	f := newFixture(t)
	resp, body := f.do(t, "GET", "/v1/branches/dev/diff", "")
	if resp.StatusCode != 200 {
		t.Fatalf("diff: %d %s", resp.StatusCode, body)
	}
	var d DiffJSON
	mustJSON(t, body, &d)
	if d.Against != "main" || len(d.Relations) != 1 || d.Relations[0].Name != "public.t" || d.Schema != nil {
		t.Errorf("diff against the parent, user relations only: %s", body)
	}
	_, body = f.do(t, "GET", "/v1/branches/dev/diff?system=true&schema=true&database=app", "")
	mustJSON(t, body, &d)
	if len(d.Relations) != 2 || len(d.Schema) != 1 || !slices.Contains(f.comp.Calls(), "schema diff dev main app") {
		t.Errorf("diff with system and schema: %s (calls %v)", body, f.comp.Calls())
	}
	for _, tc := range []struct {
		path   string
		status int
		want   string
	}{
		{"/v1/branches/main/diff", 400, "no parent"},
		{"/v1/branches/dev/diff?against=dev", 400, "itself"},
		{"/v1/branches/dev/diff?against=nope", 404, "nope does not exist"},
		{"/v1/branches/nope/diff", 404, "does not exist"},
		{"/v1/branches/dev/diff?schema=maybe", 400, "want true or false"},
	} {
		resp, body := f.do(t, "GET", tc.path, "")
		if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.want) {
			t.Errorf("GET %s: %d %s; want %d with %q", tc.path, resp.StatusCode, body, tc.status, tc.want)
		}
	}
}

func TestUsageRoute(t *testing.T) {
	f := newFixture(t)
	resp, body := f.do(t, "GET", "/v1/usage?from=2024-05-01T00:00:00Z&to=2024-06-01T00:00:00Z", "")
	if resp.StatusCode != 200 {
		t.Fatalf("usage: %d %s", resp.StatusCode, body)
	}
	var rep UsageReportJSON
	mustJSON(t, body, &rep)
	var names []string
	var sum UsageJSON
	for _, b := range rep.Branches {
		names = append(names, b.Branch)
		if b.Deleted != (b.Branch == "gone") {
			t.Errorf("%s: deleted %v", b.Branch, b.Deleted)
		}
		sum.Add(b.UsageJSON)
	}
	if !slices.Equal(names, []string{"dev", "gone", "main"}) {
		t.Errorf("branches %v", names)
	}
	if sum != rep.Total || rep.Total.ComputeSeconds != 31 || rep.Total.Wakes != 7 {
		t.Errorf("total %+v, sum of the branches %+v", rep.Total, sum)
	}
	if !rep.From.Equal(time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("from %v", rep.From)
	}
	_, body = f.do(t, "GET", "/v1/branches/dev", "")
	var b BranchJSON
	mustJSON(t, body, &b)
	if b.Usage == nil || b.Usage.RunningSeconds != 10 || b.Usage.IdleSeconds != 5 {
		t.Errorf("branch usage %+v", b.Usage)
	}
	for _, q := range []string{"?from=yesterday", "?from=2024-06-01T00:00:00Z&to=2024-05-01T00:00:00Z"} {
		if resp, body := f.do(t, "GET", "/v1/usage"+q, ""); resp.StatusCode != 400 {
			t.Errorf("GET /v1/usage%s: %d %s; want 400", q, resp.StatusCode, body)
		}
	}
}

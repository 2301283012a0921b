package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/neonproxy/neonproxy/internal/metrics"
	"github.com/neonproxy/neonproxy/router"
)

// fakeComputes is an in-memory compute manager: each branch with data has a
// size and a state.
type fakeComputes struct {
	mu       sync.Mutex
	data     map[string]int64
	state    map[string]ComputeStatus
	calls    []string
	cloneErr error
	delErr   error
	// delErrFor makes Delete of that branch fail with "busy device".
	delErrFor string
	suspErr   error
	sizeErr   error
	// gate (set up before any request, then read-only) blocks Clone of
	// the named branch until the channel is closed; started receives the
	// branch name when such a Clone begins.
	gate    map[string]chan struct{}
	started chan string
	// clients is each branch's connected clients (EndSessions clears it);
	// ended is the message each branch's clients were last told.
	clients map[string]int
	ended   map[string]string
}

func newFakeComputes() *fakeComputes {
	return &fakeComputes{data: map[string]int64{}, state: map[string]ComputeStatus{}, clients: map[string]int{}, ended: map[string]string{}}
}

// EndSessions is not recorded in calls: it precedes every delete.
func (f *fakeComputes) EndSessions(branch, message, hint string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.clients[branch]
	delete(f.clients, branch)
	f.ended[branch] = message
	return n
}

func (f *fakeComputes) Clients(branch string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.clients[branch]
}

func (f *fakeComputes) Diff(_ context.Context, branch, against string) (DiffJSON, error) {
	f.record("diff " + branch + " " + against)
	return DiffJSON{Branch: branch, Against: against, UnstoredChanges: []string{}, Relations: []RelationDiffJSON{
		{Database: "postgres", Name: "pg_catalog.pg_class", Kind: "table", OID: 1259, Relfilenode: 1259, PagesBranch: 1},
		{Database: "postgres", Name: "public.t", Kind: "table", OID: 16384, Relfilenode: 16384, PagesBranch: 2, Created: "branch"},
	}}, nil
}

func (f *fakeComputes) SchemaDiff(_ context.Context, branch, against, database string) ([]SchemaChangeJSON, error) {
	f.record("schema diff " + branch + " " + against + " " + database)
	return []SchemaChangeJSON{{Kind: "table", Action: "added", Object: "public.t", Text: "+ table public.t"}}, nil
}

// Usage: each branch with data ran 10 s and idled 5 s; a deleted branch
// "gone" ran 1 s.
func (f *fakeComputes) Usage(_ context.Context, branch string, from, to time.Time) (map[string]UsageJSON, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]UsageJSON{"gone": {ComputeSeconds: 1, RunningSeconds: 1, Wakes: 1, ColdWakes: 1}}
	for b, size := range f.data {
		out[b] = UsageJSON{ComputeSeconds: 15, RunningSeconds: 10, IdleSeconds: 5, Wakes: 3, ColdWakes: 1, WarmWakes: 1, HotWakes: 1,
			UniqueBytes: size, LogicalSizeBytes: size}
	}
	if branch != "" {
		return map[string]UsageJSON{branch: out[branch]}, nil
	}
	return out, nil
}

func (f *fakeComputes) Reset(_ context.Context, parent, branch string) error {
	f.record("reset " + parent + " " + branch)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.data[branch] = f.data[parent]
	return nil
}

func (f *fakeComputes) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakeComputes) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeComputes) Status(branch string) ComputeStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state[branch]
}

func (f *fakeComputes) Clone(ctx context.Context, parent, branch, lsn, at string) error {
	if lsn+at != "" {
		f.record("clone " + parent + " " + branch + " at " + lsn + at)
	} else {
		f.record("clone " + parent + " " + branch)
	}
	if g, ok := f.gate[branch]; ok {
		f.started <- branch
		<-g
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cloneErr != nil {
		return f.cloneErr
	}
	size, ok := f.data[parent]
	if !ok {
		return fmt.Errorf("no data for %s: %w", parent, router.ErrBranchNotFound)
	}
	f.data[branch] = size
	return nil
}

func (f *fakeComputes) SetPrewarm(branch string, enabled bool) {
	f.record(fmt.Sprintf("prewarm %s %v", branch, enabled))
}

func (f *fakeComputes) Suspend(ctx context.Context, branch string) error {
	f.record("suspend " + branch)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.suspErr != nil {
		return f.suspErr
	}
	st := f.state[branch]
	st.State, st.PID, st.Clients = "stopped", 0, 0
	f.state[branch] = st
	return nil
}

func (f *fakeComputes) Delete(ctx context.Context, branch string) error {
	f.record("delete " + branch)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.delErr != nil {
		return f.delErr
	}
	if f.delErrFor == branch {
		return errors.New("busy device")
	}
	delete(f.data, branch)
	delete(f.state, branch)
	return nil
}

func (f *fakeComputes) Storage(_ context.Context, branch string) (Storage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sizeErr != nil {
		return Storage{}, f.sizeErr
	}
	s, ok := f.data[branch]
	if !ok {
		return Storage{}, errors.New("no data")
	}
	return Storage{LogicalBytes: s, UniqueBytes: s}, nil
}

type fixture struct {
	reg  *router.EmbeddedRegistry
	comp *fakeComputes
	m    *metrics.Metrics
	srv  *httptest.Server
	logs *observer.ObservedLogs
	h    *Handler
}

// newFixture serves the admin API over a registry holding main (with a
// running compute) and dev (a child of main).
func newFixture(t *testing.T) *fixture {
	t.Helper()
	reg, err := router.OpenEmbedded(filepath.Join(t.TempDir(), "branches.json"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	ctx := context.Background()
	created := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	if err := reg.Create(ctx, router.Branch{Name: "main", CreatedAt: created}); err != nil {
		t.Fatal(err)
	}
	if err := reg.Create(ctx, router.Branch{Name: "dev", Parent: "main", CreatedAt: created}); err != nil {
		t.Fatal(err)
	}
	comp := newFakeComputes()
	comp.data["main"] = 4096
	comp.data["dev"] = 4096
	comp.state["main"] = ComputeStatus{State: "running", Clients: 2, PID: 4242, StartedAt: created, LastUsed: created.Add(time.Minute)}
	m := metrics.New()
	core, logs := observer.New(zap.DebugLevel)
	h := NewHandler(reg, comp, m, zap.New(core))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fixture{reg: reg, comp: comp, m: m, srv: srv, logs: logs, h: h}
}

func (f *fixture) do(t *testing.T, method, path, body string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

func (f *fixture) names(t *testing.T) []string {
	t.Helper()
	bs, err := f.reg.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range bs {
		out = append(out, b.Name)
	}
	return out
}

func TestRoutes(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(f *fixture)
		method     string
		path       string
		body       string
		wantStatus int
		wantErr    string // substring of the JSON "error"; "" for success
		check      func(t *testing.T, f *fixture, body []byte)
	}{
		{
			name: "healthz", method: "GET", path: "/healthz", wantStatus: 200,
			check: func(t *testing.T, _ *fixture, body []byte) {
				if string(body) != "ok" {
					t.Errorf("body = %q, want ok", body)
				}
			},
		},
		{
			name: "patch settings", method: "PATCH", path: "/v1/branches/dev", body: `{"allowed_ips": ["10.0.0.0/8"], "max_client_conn": 4}`, wantStatus: 200,
			check: func(t *testing.T, f *fixture, body []byte) {
				var got BranchJSON
				mustJSON(t, body, &got)
				if len(got.AllowedIPs) != 1 || got.AllowedIPs[0] != "10.0.0.0/8" || got.MaxClientConn != 4 || got.Parent != "main" {
					t.Fatalf("patched = %+v", got)
				}
				// A key left out keeps its value.
				_, body = f.do(t, "PATCH", "/v1/branches/dev", `{"max_client_conn": 0}`)
				mustJSON(t, body, &got)
				if len(got.AllowedIPs) != 1 || got.MaxClientConn != 0 {
					t.Fatalf("second patch = %+v", got)
				}
			},
		},
		{name: "patch bad CIDR", method: "PATCH", path: "/v1/branches/dev", body: `{"allowed_ips": ["10.0.0.0/40"]}`, wantStatus: 400, wantErr: "10.0.0.0/40"},
		{name: "patch negative cap", method: "PATCH", path: "/v1/branches/dev", body: `{"max_client_conn": -2}`, wantStatus: 400, wantErr: "max_client_conn -2"},
		{name: "patch unknown key", method: "PATCH", path: "/v1/branches/dev", body: `{"parent": "x"}`, wantStatus: 400, wantErr: "unknown field"},
		{name: "patch unknown branch", method: "PATCH", path: "/v1/branches/nope", body: `{}`, wantStatus: 404, wantErr: "branch nope does not exist"},
		{
			name: "metrics", method: "GET", path: "/metrics", wantStatus: 200,
			check: func(t *testing.T, _ *fixture, body []byte) {
				if !strings.Contains(string(body), "neonproxy_branches 2") {
					t.Errorf("metrics lack neonproxy_branches 2:\n%.2000s", body)
				}
			},
		},
		{
			name: "list", method: "GET", path: "/v1/branches", wantStatus: 200,
			check: func(t *testing.T, _ *fixture, body []byte) {
				var got []BranchJSON
				mustJSON(t, body, &got)
				if len(got) != 2 || got[0].Name != "dev" || got[1].Name != "main" {
					t.Fatalf("list = %+v", got)
				}
				if got[0].Parent != "main" || got[0].Compute.State != "stopped" || got[0].LogicalSizeBytes != 4096 || got[0].UniqueBytes != 4096 {
					t.Errorf("dev = %+v", got[0])
				}
				if got[1].Compute.State != "running" || got[1].Compute.PID != 4242 || got[1].Compute.Clients != 2 {
					t.Errorf("main = %+v", got[1])
				}
			},
		},
		{
			name: "get raw JSON keys", method: "GET", path: "/v1/branches/main", wantStatus: 200,
			check: func(t *testing.T, _ *fixture, body []byte) {
				var raw map[string]any
				mustJSON(t, body, &raw)
				for _, k := range []string{"name", "parent", "parent_lsn", "created_at", "compute", "logical_size_bytes", "unique_bytes"} {
					if _, ok := raw[k]; !ok {
						t.Errorf("key %q missing in %s", k, body)
					}
				}
				c := raw["compute"].(map[string]any)
				for _, k := range []string{"state", "clients", "pid", "started_at", "last_used"} {
					if _, ok := c[k]; !ok {
						t.Errorf("compute key %q missing in %s", k, body)
					}
				}
				if _, ok := c["last_error"]; ok {
					t.Errorf("empty last_error should be omitted: %s", body)
				}
				if raw["created_at"] != "2024-05-01T12:00:00Z" {
					t.Errorf("created_at = %v", raw["created_at"])
				}
			},
		},
		{
			name: "get stopped omits process fields", method: "GET", path: "/v1/branches/dev", wantStatus: 200,
			check: func(t *testing.T, _ *fixture, body []byte) {
				var raw map[string]any
				mustJSON(t, body, &raw)
				c := raw["compute"].(map[string]any)
				for _, k := range []string{"pid", "started_at", "last_used", "last_error"} {
					if _, ok := c[k]; ok {
						t.Errorf("stopped compute shows %q: %s", k, body)
					}
				}
				if c["state"] != "stopped" || c["clients"] != float64(0) {
					t.Errorf("compute = %v", c)
				}
			},
		},
		{name: "get unknown", method: "GET", path: "/v1/branches/nope", wantStatus: 404, wantErr: "branch nope does not exist"},
		{name: "get invalid name", method: "GET", path: "/v1/branches/Bad_Name", wantStatus: 400, wantErr: "invalid branch name"},
		{
			name: "create", method: "POST", path: "/v1/branches", body: `{"name":"feature-1","parent":"dev"}`, wantStatus: 201,
			check: func(t *testing.T, f *fixture, body []byte) {
				var got BranchJSON
				mustJSON(t, body, &got)
				if got.Name != "feature-1" || got.Parent != "dev" || got.Compute.State != "stopped" || got.LogicalSizeBytes != 4096 {
					t.Errorf("created = %+v", got)
				}
				if time.Since(got.CreatedAt) > time.Minute {
					t.Errorf("created_at = %v", got.CreatedAt)
				}
				if b, err := f.reg.Get(context.Background(), "feature-1"); err != nil || b.Parent != "dev" {
					t.Errorf("registry: %+v, %v", b, err)
				}
				if v := gaugeValue(t, f.m.BranchesTotal); v != 3 {
					t.Errorf("BranchesTotal = %v, want 3", v)
				}
			},
		},
		{
			name: "create parent defaults to main", method: "POST", path: "/v1/branches", body: `{"name":"x"}`, wantStatus: 201,
			check: func(t *testing.T, f *fixture, body []byte) {
				var got BranchJSON
				mustJSON(t, body, &got)
				if got.Parent != "main" {
					t.Errorf("parent = %q", got.Parent)
				}
				if calls := f.comp.Calls(); len(calls) != 1 || calls[0] != "clone main x" {
					t.Errorf("calls = %v", calls)
				}
			},
		},
		{name: "create invalid name", method: "POST", path: "/v1/branches", body: `{"name":"NO"}`, wantStatus: 400, wantErr: "invalid branch name"},
		{name: "create pooler suffix", method: "POST", path: "/v1/branches", body: `{"name":"a-pooler"}`, wantStatus: 400, wantErr: "reserved"},
		{name: "create missing name", method: "POST", path: "/v1/branches", body: `{"parent":"main"}`, wantStatus: 400, wantErr: "name"},
		{name: "create empty body", method: "POST", path: "/v1/branches", wantStatus: 400, wantErr: "request body is empty"},
		{name: "create bad JSON", method: "POST", path: "/v1/branches", body: `{"name":`, wantStatus: 400, wantErr: "JSON"},
		{name: "create unknown field", method: "POST", path: "/v1/branches", body: `{"name":"x","parnet":"main"}`, wantStatus: 400, wantErr: "parnet"},
		{name: "create two objects", method: "POST", path: "/v1/branches", body: `{"name":"x"}{"name":"y"}`, wantStatus: 400, wantErr: "exactly one"},
		{name: "create unknown parent", method: "POST", path: "/v1/branches", body: `{"name":"x","parent":"ghost"}`, wantStatus: 404, wantErr: "parent branch ghost does not exist"},
		{name: "create exists", method: "POST", path: "/v1/branches", body: `{"name":"dev"}`, wantStatus: 409, wantErr: "branch dev already exists"},
		{
			name: "create with lsn", method: "POST", path: "/v1/branches", body: `{"name":"x","lsn":"0/16B3748"}`, wantStatus: 201,
			check: func(t *testing.T, f *fixture, _ []byte) {
				if calls := f.comp.Calls(); len(calls) != 1 || calls[0] != "clone main x at 0/16B3748" {
					t.Errorf("calls = %v", calls)
				}
			},
		},
		{name: "create at an unreachable lsn", method: "POST", path: "/v1/branches", body: `{"name":"x","lsn":"0/1"}`, wantStatus: 400,
			wantErr: "valid LSNs are", setup: func(f *fixture) { f.comp.cloneErr = fmt.Errorf("%w: valid LSNs are 0/2 to 0/3", ErrInvalidTarget) }},
		{
			name: "create with at", method: "POST", path: "/v1/branches", body: `{"name":"x","at":"2024-05-01T12:00:00Z"}`, wantStatus: 201,
			check: func(t *testing.T, f *fixture, _ []byte) {
				if calls := f.comp.Calls(); len(calls) != 1 || calls[0] != "clone main x at 2024-05-01T12:00:00Z" {
					t.Errorf("calls = %v", calls)
				}
			},
		},
		{name: "create bad lsn", method: "POST", path: "/v1/branches", body: `{"name":"x","lsn":"16B3748"}`, wantStatus: 400, wantErr: "0/16B3748"},
		{name: "create bad at", method: "POST", path: "/v1/branches", body: `{"name":"x","at":"yesterday"}`, wantStatus: 400, wantErr: "RFC 3339"},
		{name: "create lsn and at", method: "POST", path: "/v1/branches", body: `{"name":"x","lsn":"0/1","at":"2024-05-01T12:00:00Z"}`, wantStatus: 400, wantErr: "not both"},
		{
			name: "create clone fails", method: "POST", path: "/v1/branches", body: `{"name":"x"}`, wantStatus: 500, wantErr: "disk full",
			setup: func(f *fixture) { f.comp.cloneErr = errors.New("disk full") },
			check: func(t *testing.T, f *fixture, _ []byte) {
				if got := strings.Join(f.names(t), ","); got != "dev,main" {
					t.Errorf("registry = %s", got)
				}
				if calls := f.comp.Calls(); len(calls) != 2 || calls[1] != "delete x" {
					t.Errorf("calls = %v, want clone then cleanup delete", calls)
				}
				if f.logs.FilterLevelExact(zap.WarnLevel).Len() == 0 {
					t.Errorf("500 not logged at warn")
				}
			},
		},
		{
			name: "create parent data missing", method: "POST", path: "/v1/branches", body: `{"name":"x","parent":"dev"}`, wantStatus: 404, wantErr: "no data for dev",
			setup: func(f *fixture) { delete(f.comp.data, "dev") },
		},
		{
			name: "delete", method: "DELETE", path: "/v1/branches/dev", wantStatus: 204,
			check: func(t *testing.T, f *fixture, body []byte) {
				if len(body) != 0 {
					t.Errorf("204 with body %q", body)
				}
				if got := strings.Join(f.names(t), ","); got != "main" {
					t.Errorf("registry = %s", got)
				}
				if calls := f.comp.Calls(); len(calls) != 1 || calls[0] != "delete dev" {
					t.Errorf("calls = %v", calls)
				}
				if v := gaugeValue(t, f.m.BranchesTotal); v != 1 {
					t.Errorf("BranchesTotal = %v, want 1", v)
				}
			},
		},
		{name: "delete unknown", method: "DELETE", path: "/v1/branches/nope", wantStatus: 404, wantErr: "branch nope does not exist"},
		{name: "delete invalid", method: "DELETE", path: "/v1/branches/A", wantStatus: 400, wantErr: "invalid branch name"},
		{name: "delete default", method: "DELETE", path: "/v1/branches/main", wantStatus: 409, wantErr: "is the default branch",
			setup: func(f *fixture) {
				if err := f.reg.Delete(context.Background(), "dev"); err != nil {
					panic(err)
				}
			},
		},
		{
			name: "delete parent", method: "DELETE", path: "/v1/branches/dev", wantStatus: 409, wantErr: "branch dev is the parent of a, b; delete them first, or delete with ?cascade=true",
			setup: func(f *fixture) {
				for _, n := range []string{"b", "a"} {
					if err := f.reg.Create(context.Background(), router.Branch{Name: n, Parent: "dev"}); err != nil {
						panic(err)
					}
				}
			},
			check: func(t *testing.T, f *fixture, _ []byte) {
				if len(f.comp.Calls()) != 0 {
					t.Errorf("compute touched: %v", f.comp.Calls())
				}
			},
		},
		{
			name: "delete cascade", method: "DELETE", path: "/v1/branches/dev?cascade=true", wantStatus: 204,
			setup: func(f *fixture) {
				for _, b := range []router.Branch{{Name: "b", Parent: "dev"}, {Name: "a", Parent: "dev"}, {Name: "a1", Parent: "a"}} {
					if err := f.reg.Create(context.Background(), b); err != nil {
						panic(err)
					}
				}
			},
			check: func(t *testing.T, f *fixture, _ []byte) {
				// Children before parents, siblings by name.
				if got := strings.Join(f.comp.Calls(), ","); got != "delete a1,delete a,delete b,delete dev" {
					t.Errorf("calls = %s", got)
				}
				if got := strings.Join(f.names(t), ","); got != "main" {
					t.Errorf("registry after cascade: %s", got)
				}
			},
		},
		{
			name: "delete cascade stops at a failure", method: "DELETE", path: "/v1/branches/dev?cascade=true", wantStatus: 500,
			wantErr: "delete compute of branch dev: busy device (already deleted: a)",
			setup: func(f *fixture) {
				if err := f.reg.Create(context.Background(), router.Branch{Name: "a", Parent: "dev"}); err != nil {
					panic(err)
				}
				f.comp.delErrFor = "dev"
			},
			check: func(t *testing.T, f *fixture, _ []byte) {
				if got := strings.Join(f.names(t), ","); got != "dev,main" {
					t.Errorf("registry: %s", got)
				}
			},
		},
		{name: "delete cascade invalid", method: "DELETE", path: "/v1/branches/dev?cascade=yes", wantStatus: 400, wantErr: `cascade="yes"`},
		{
			name: "delete compute fails", method: "DELETE", path: "/v1/branches/dev", wantStatus: 500, wantErr: "busy device",
			setup: func(f *fixture) { f.comp.delErr = errors.New("busy device") },
			check: func(t *testing.T, f *fixture, _ []byte) {
				if got := strings.Join(f.names(t), ","); got != "dev,main" {
					t.Errorf("registry changed though compute delete failed: %s", got)
				}
			},
		},
		{
			name: "suspend", method: "POST", path: "/v1/branches/main/suspend", wantStatus: 200,
			check: func(t *testing.T, f *fixture, body []byte) {
				var got BranchJSON
				mustJSON(t, body, &got)
				if got.Name != "main" || got.Compute.State != "stopped" || got.Compute.PID != 0 {
					t.Errorf("suspended = %+v", got)
				}
				if calls := f.comp.Calls(); len(calls) != 1 || calls[0] != "suspend main" {
					t.Errorf("calls = %v", calls)
				}
			},
		},
		{name: "suspend unknown", method: "POST", path: "/v1/branches/nope/suspend", wantStatus: 404, wantErr: "branch nope does not exist"},
		{
			name: "prewarm off", method: "POST", path: "/v1/branches/main/prewarm", body: `{"enabled":false}`, wantStatus: 200,
			check: func(t *testing.T, f *fixture, body []byte) {
				var got BranchJSON
				mustJSON(t, body, &got)
				if got.Name != "main" || got.Compute.Prewarm == nil {
					t.Errorf("prewarm = %+v", got)
				}
				if calls := f.comp.Calls(); len(calls) != 1 || calls[0] != "prewarm main false" {
					t.Errorf("calls = %v", calls)
				}
			},
		},
		{name: "prewarm bad body", method: "POST", path: "/v1/branches/main/prewarm", body: `{"enabled":"maybe"}`, wantStatus: 400, wantErr: "want {"},
		{name: "prewarm unknown", method: "POST", path: "/v1/branches/nope/prewarm", body: `{"enabled":true}`, wantStatus: 404, wantErr: "branch nope does not exist"},
		{name: "suspend fails", method: "POST", path: "/v1/branches/main/suspend", wantStatus: 500, wantErr: "stuck",
			setup: func(f *fixture) { f.comp.suspErr = errors.New("stuck") }},
		{name: "suspend timeout", method: "POST", path: "/v1/branches/main/suspend", wantStatus: 504, wantErr: "deadline",
			setup: func(f *fixture) { f.comp.suspErr = fmt.Errorf("stop: %w", context.DeadlineExceeded) }},
		{name: "size error still lists", method: "GET", path: "/v1/branches/main", wantStatus: 200,
			setup: func(f *fixture) { f.comp.sizeErr = errors.New("no dir") },
			check: func(t *testing.T, _ *fixture, body []byte) {
				var got BranchJSON
				mustJSON(t, body, &got)
				if got.LogicalSizeBytes != 0 || got.Compute.State != "running" {
					t.Errorf("got %+v", got)
				}
			},
		},
		{name: "unknown route", method: "GET", path: "/v2/nothing", wantStatus: 404, wantErr: "no such endpoint"},
		{name: "trailing slash", method: "GET", path: "/v1/branches/", wantStatus: 404, wantErr: "no such endpoint"},
		{name: "too deep", method: "GET", path: "/v1/branches/main/extra", wantStatus: 404, wantErr: "no such endpoint"},
		{name: "405 list", method: "PUT", path: "/v1/branches", wantStatus: 405, wantErr: "not allowed"},
		{name: "405 branch", method: "POST", path: "/v1/branches/main", wantStatus: 405, wantErr: "not allowed"},
		{name: "405 suspend", method: "GET", path: "/v1/branches/main/suspend", wantStatus: 405, wantErr: "not allowed"},
		{name: "405 healthz", method: "POST", path: "/healthz", wantStatus: 405, wantErr: "not allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.setup != nil {
				tc.setup(f)
			}
			resp, body := f.do(t, tc.method, tc.path, tc.body)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("%s %s: status %d, want %d; body %s", tc.method, tc.path, resp.StatusCode, tc.wantStatus, body)
			}
			if tc.wantErr != "" || resp.StatusCode >= 400 {
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("error Content-Type = %q", ct)
				}
				var e ErrorJSON
				mustJSON(t, body, &e)
				if !strings.Contains(e.Error, tc.wantErr) {
					t.Errorf("error = %q, want it to contain %q", e.Error, tc.wantErr)
				}
			}
			if resp.StatusCode == 405 && resp.Header.Get("Allow") == "" {
				t.Errorf("405 without Allow header")
			}
			if tc.check != nil {
				tc.check(t, f, body)
			}
		})
	}
}

func mustJSON(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %s: %v", data, err)
	}
}

func TestDefaultBranchOption(t *testing.T) {
	reg, err := router.OpenEmbedded(filepath.Join(t.TempDir(), "branches.json"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, b := range []router.Branch{{Name: "main"}, {Name: "prod"}} {
		if err := reg.Create(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	comp := newFakeComputes()
	comp.data["main"], comp.data["prod"] = 1, 2
	srv := httptest.NewServer(NewHandlerWithOptions(reg, comp, metrics.New(), nil, HandlerOptions{DefaultBranch: "prod"}))
	defer srv.Close()
	c := &Client{BaseURL: srv.URL}

	b, err := c.CreateBranch(ctx, "x", "")
	if err != nil || b.Parent != "prod" || b.LogicalSizeBytes != 2 {
		t.Fatalf("create without parent = %+v, %v; want parent prod", b, err)
	}
	if err := c.DeleteBranch(ctx, "prod"); apiStatus(err) != 409 || !strings.Contains(err.Error(), "default branch") {
		t.Fatalf("delete prod: %v", err)
	}
	if err := c.DeleteBranch(ctx, "main"); err != nil {
		t.Fatalf("delete main (not the default here): %v", err)
	}
}

func apiStatus(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// A delete of the parent while a branch is being cloned from it must not
// slip through; neither may a second create of the same name.
func TestCreateInFlightConflicts(t *testing.T) {
	f := newFixture(t)
	gate := make(chan struct{})
	f.comp.gate = map[string]chan struct{}{"slow": gate}
	f.comp.started = make(chan string, 1)
	done := make(chan int)
	go func() {
		resp, err := http.Post(f.srv.URL+"/v1/branches", "application/json", strings.NewReader(`{"name":"slow","parent":"dev"}`))
		if err != nil {
			t.Error(err)
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	<-f.comp.started

	resp, body := f.do(t, "DELETE", "/v1/branches/dev", "")
	if resp.StatusCode != 409 || !strings.Contains(string(body), "busy") {
		t.Errorf("delete parent during clone: %d %s", resp.StatusCode, body)
	}
	resp, body = f.do(t, "DELETE", "/v1/branches/slow", "")
	if resp.StatusCode != 409 {
		t.Errorf("delete of the branch being created: %d %s", resp.StatusCode, body)
	}
	resp, body = f.do(t, "POST", "/v1/branches", `{"name":"slow"}`)
	if resp.StatusCode != 409 {
		t.Errorf("second create during clone: %d %s", resp.StatusCode, body)
	}
	// Creating another branch from the same parent is fine.
	resp, body = f.do(t, "POST", "/v1/branches", `{"name":"other","parent":"dev"}`)
	if resp.StatusCode != 201 {
		t.Errorf("parallel create from same parent: %d %s", resp.StatusCode, body)
	}
	close(gate)
	if status := <-done; status != 201 {
		t.Fatalf("slow create: %d", status)
	}
	resp, body = f.do(t, "DELETE", "/v1/branches/slow", "")
	if resp.StatusCode != 204 {
		t.Fatalf("delete after create finished: %d %s", resp.StatusCode, body)
	}
}

// TestConcurrentCreatesSameName: exactly one of many racing creates wins,
// the others get 409, and the losers' copies are not left behind.
func TestConcurrentCreatesSameName(t *testing.T) {
	f := newFixture(t)
	const n = 16
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			resp, err := http.Post(f.srv.URL+"/v1/branches", "application/json", strings.NewReader(`{"name":"race"}`))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			statuses[i] = resp.StatusCode
		}(i)
	}
	wg.Wait()
	sort.Ints(statuses)
	wins := 0
	for _, s := range statuses {
		switch s {
		case 201:
			wins++
		case 409:
		default:
			t.Errorf("unexpected status %d", s)
		}
	}
	if wins != 1 {
		t.Fatalf("wins = %d (%v)", wins, statuses)
	}
	if _, err := f.comp.Storage(context.Background(), "race"); err != nil {
		t.Fatalf("winner's data was removed")
	}
}

// TestRequestLogging: every request is logged at debug.
func TestRequestLogging(t *testing.T) {
	f := newFixture(t)
	f.do(t, "GET", "/v1/branches/nope", "")
	entries := f.logs.FilterMessage("admin request").All()
	if len(entries) != 1 || entries[0].Level != zap.DebugLevel {
		t.Fatalf("log entries = %+v", entries)
	}
	fields := entries[0].ContextMap()
	if fields["status"] != int64(404) || fields["path"] != "/v1/branches/nope" || !strings.Contains(fmt.Sprint(fields["error"]), "does not exist") {
		t.Errorf("fields = %v", fields)
	}
}

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

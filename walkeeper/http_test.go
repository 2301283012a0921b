package walkeeper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// openServed opens a keeper and serves its HTTP API on 127.0.0.1.
func openServed(t *testing.T) (*Keeper, *httptest.Server, *Client) {
	t.Helper()
	k := openTest(t, t.TempDir())
	t.Cleanup(func() { _ = k.Close() })
	srv := httptest.NewServer(Handler(k, nil, ""))
	// Follow requests stay open: cut them so Close does not wait for them.
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	c, err := NewClient(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return k, srv, c
}

// export reads a whole export of s and checks its length.
func export(t *testing.T, s Service, ns uint64, from, to LSN) (LSN, LSN, []byte) {
	t.Helper()
	w, err := s.Export(context.Background(), ns, from, to)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Body.Close()
	b, err := io.ReadAll(w.Body)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != w.Len() {
		t.Fatalf("export %s..%s has %d bytes, Len %d", fmtLSN(w.Start), fmtLSN(w.Flush), len(b), w.Len())
	}
	return w.Start, w.Flush, b
}

// body is export's body.
func body(t *testing.T, s Service, ns uint64, from, to LSN) []byte {
	t.Helper()
	_, _, b := export(t, s, ns, from, to)
	return b
}

// fedPages is what `feed` stored from page start up to flush, as an export
// returns it: zero beyond flush in its page.
func fedPages(start, flush LSN) []byte {
	b := make([]byte, pageOf(flush-1)+PageSize-start)
	copy(b, pattern(start, int(flush-start)))
	return b
}

func info(t *testing.T, s Service, ns uint64) Info {
	t.Helper()
	in, err := s.Info(context.Background(), ns)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// rawStatus sends a request without the client and returns the status and
// the decoded error message (for non-2xx answers).
func rawStatus(t *testing.T, method, url string, hdr map[string]string, payload string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error string `json:"error"`
	}
	if resp.StatusCode/100 != 2 {
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Error == "" {
			t.Fatalf("%s %s: %s without a JSON error: %v", method, url, resp.Status, err)
		}
	}
	return resp.StatusCode, e.Error
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHTTPExportImport(t *testing.T) {
	ctx := context.Background()
	k, srv, c := openServed(t)
	const ns = 4
	start := LSN(0x3000000)
	end := start + 9*PageSize + 1234
	feed(t, k, ns, start, end, 3000, 20000)
	if err := k.SetCovered(ctx, ns, start+PageSize); err != nil {
		t.Fatal(err)
	}
	if got, want := info(t, c, ns), info(t, k, ns); got != want || want.Flush != end || want.Start != start {
		t.Fatalf("client Info %+v, keeper Info %+v", got, want)
	}

	from := start + 3*PageSize + 100
	for _, tc := range []struct {
		name            string
		to              LSN
		wantStart, want LSN // the range exported
	}{
		{"to the flush", 0, start + 3*PageSize, end},
		{"to mid-page", start + 5*PageSize + 10, start + 3*PageSize, start + 5*PageSize + 10},
		{"to a page boundary", start + 6*PageSize, start + 3*PageSize, start + 6*PageSize},
		{"to beyond the flush", end + 10*PageSize, start + 3*PageSize, end},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotStart, gotFlush, got := export(t, c, ns, from, tc.to)
			if gotStart != tc.wantStart || gotFlush != tc.want {
				t.Fatalf("export range %s..%s, want %s..%s", fmtLSN(gotStart), fmtLSN(gotFlush), fmtLSN(tc.wantStart), fmtLSN(tc.want))
			}
			local := body(t, k, ns, from, tc.to)
			if !bytes.Equal(got, local) {
				t.Fatal("remote export differs from the local one")
			}
			if !bytes.Equal(got, fedPages(tc.wantStart, tc.want)) {
				t.Fatal("export differs from the fed WAL")
			}
		})
	}

	t.Run("import", func(t *testing.T) {
		k2, _, c2 := openServed(t)
		const ns2 = 11
		// Whatever ns2 held before is replaced.
		feed(t, k2, ns2, 0x9000000, 0x9000000+3*PageSize, 4096, 1<<20)
		w, err := c.Export(ctx, ns, start, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := c2.Import(ctx, ns2, w); err != nil {
			t.Fatal(err)
		}
		got, want := info(t, c2, ns2), info(t, k, ns)
		if got.Start != want.Start || got.Flush != want.Flush {
			t.Fatalf("imported Info %+v, source %+v", got, want)
		}
		if !bytes.Equal(body(t, c2, ns2, start, 0), body(t, k, ns, start, 0)) {
			t.Fatal("imported WAL differs")
		}
		// An empty range imports as no WAL.
		if err := c2.Import(ctx, ns2, &WAL{Start: start, Flush: start, Body: io.NopCloser(strings.NewReader(""))}); err != nil {
			t.Fatal(err)
		}
		if in := info(t, k2, ns2); in.Flush != 0 || in.Start != 0 {
			t.Fatalf("after an empty import: %+v", in)
		}
	})

	t.Run("import of a local export", func(t *testing.T) {
		_, _, c2 := openServed(t)
		w, err := k.Export(ctx, ns, start, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := c2.Import(ctx, 1, w); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("no WAL", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			ns   uint64
			from LSN
		}{
			{"empty namespace", 99, 0},
			{"beyond the flush", ns, end + 1},
			{"before the start", ns, start - 1},
		} {
			if w, err := c.Export(ctx, tc.ns, tc.from, 0); !errors.Is(err, ErrNoWAL) {
				if err == nil {
					w.Body.Close()
				}
				t.Errorf("%s: Export err %v, want ErrNoWAL", tc.name, err)
			}
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		u := srv.URL + "/v1/wal/"
		hdrs := func(s, f LSN) map[string]string {
			return map[string]string{hdrStart: fmt.Sprint(s), hdrFlush: fmt.Sprint(f)}
		}
		for _, tc := range []struct {
			method, path string
			hdr          map[string]string
			body         string
			want         int
		}{
			{"GET", "abc", nil, "", http.StatusBadRequest},
			{"GET", "-1", nil, "", http.StatusBadRequest},
			{"GET", "4/pages?from=x", nil, "", http.StatusBadRequest},
			{"GET", "4/pages?from=1&to=-5", nil, "", http.StatusBadRequest},
			{"POST", "4/trim?before=1.5", nil, "", http.StatusBadRequest},
			{"PUT", "4/covered?lsn=abc", nil, "", http.StatusBadRequest},
			{"DELETE", "x4", nil, "", http.StatusBadRequest},
			{"PUT", "4/pages", nil, "", http.StatusBadRequest},
			{"PUT", "4/pages", hdrs(start, start+PageSize), "short", http.StatusBadRequest},
			{"POST", "4/follow", nil, "not json", http.StatusBadRequest},
			{"POST", "4/follow", nil, `{"ns": 5, "slot": "s"}`, http.StatusBadRequest},
			{"GET", "98/pages?from=0", nil, "", http.StatusNotFound},
			{"GET", fmt.Sprintf("4/pages?from=%d", end+1), nil, "", http.StatusNotFound},
		} {
			if got, msg := rawStatus(t, tc.method, u+tc.path, tc.hdr, tc.body); got != tc.want {
				t.Errorf("%s /v1/wal/%s: %d (%s), want %d", tc.method, tc.path, got, msg, tc.want)
			}
		}
		if got, _ := rawStatus(t, "GET", srv.URL+"/healthz", nil, ""); got != http.StatusOK {
			t.Errorf("healthz: %d", got)
		}
		// None of that touched ns's WAL.
		if in := info(t, k, ns); in.Start != start || in.Flush != end {
			t.Fatalf("after bad requests: %+v", in)
		}
	})

	t.Run("trim covered drop", func(t *testing.T) {
		want := info(t, k, ns)
		for _, step := range []struct {
			name string
			op   func() error
			edit func(*Info)
		}{
			{"trim", func() error { return c.Trim(ctx, ns, start+2*PageSize+5) }, func(in *Info) { in.Start = start + 2*PageSize }},
			{"covered", func() error { return c.SetCovered(ctx, ns, start+4*PageSize) }, func(in *Info) { in.Covered = start + 4*PageSize }},
			{"trim past the flush", func() error { return c.Trim(ctx, ns, end+50*PageSize) }, func(in *Info) { in.Start = pageOf(end) }},
			{"drop", func() error { return c.Drop(ctx, ns) }, func(in *Info) { *in = Info{} }},
		} {
			if err := step.op(); err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
			step.edit(&want)
			if got, local := info(t, c, ns), info(t, k, ns); got != want || local != want {
				t.Fatalf("after %s: client Info %+v, keeper Info %+v, want %+v", step.name, got, local, want)
			}
		}
	})
}

// TestFencing applies compute generations through the HTTP API. No
// PostgreSQL listens at the connection string: each Follow fails at the
// connection, after its generation was applied.
func TestFencing(t *testing.T) {
	ctx := context.Background()
	k, srv, c := openServed(t)
	const ns = 6
	start := LSN(0x4000000)
	end := start + 10*PageSize + 500
	feed(t, k, ns, start, end, 5000, 1<<20)
	conn := fmt.Sprintf("host=%s user=postgres dbname=postgres connect_timeout=5", t.TempDir())
	midCut := start + 7*PageSize + 123
	pageCut := start + 5*PageSize
	lagStart := pageCut + 3*PageSize + 40

	for _, tc := range []struct {
		name         string
		gen          uint64
		genStart     LSN
		fenced       bool
		flush        LSN // stored flush afterwards
		wantGen      uint64
		wantGenStart LSN
		wantDataGen  uint64
	}{
		{"first generation at the end", 2, end, false, end, 2, end, 2},
		{"older generation", 1, start, true, end, 2, end, 2},
		{"same generation keeps the WAL", 2, start + PageSize, false, end, 2, end, 2},
		{"newer generation cuts mid-page", 3, midCut, false, midCut, 3, midCut, 3},
		{"newer generation cuts at a page boundary", 4, pageCut, false, pageCut, 4, pageCut, 4},
		{"no fencing", 0, start, false, pageCut, 4, pageCut, 4},
		{"stale after the cut", 3, pageCut, true, pageCut, 4, pageCut, 4},
		// A lagging keeper adopts the generation (fencing) but holds none
		// of its WAL yet: its data stays of generation 4.
		{"newer generation while lagging", 5, lagStart, false, pageCut, 5, lagStart, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := c.Follow(ctx, FollowRequest{NS: ns, ConnString: conn, Slot: "wk_fence", From: start,
				Gen: tc.gen, GenStart: tc.genStart})
			if err == nil {
				f.Stop()
				t.Fatal("Follow succeeded without a compute")
			}
			if errors.Is(err, ErrFenced) != tc.fenced || errors.Is(err, ErrNoWAL) {
				t.Fatalf("Follow: %v (want fenced: %v)", err, tc.fenced)
			}
			in := info(t, c, ns)
			if in.Start != start || in.Flush != tc.flush || in.Gen != tc.wantGen || in.GenStart != tc.wantGenStart ||
				in.DataGen != tc.wantDataGen || in.Streaming {
				t.Fatalf("Info %+v, want start %s flush %s gen %d from %s", in, fmtLSN(start), fmtLSN(tc.flush), tc.wantGen, fmtLSN(tc.wantGenStart))
			}
			if !bytes.Equal(body(t, c, ns, start, 0), fedPages(start, tc.flush)) {
				t.Fatal("exported WAL is not the fed WAL up to the flush")
			}
			// What is stored, not just what Export shows: nothing beyond the
			// flush.
			last, err := k.readPage(ns, pageOf(tc.flush-1))
			if err != nil || !bytes.Equal(last, fedPages(pageOf(tc.flush-1), tc.flush)) {
				t.Fatalf("stored last page (%v) not cut at %s", err, fmtLSN(tc.flush))
			}
			if p, err := k.readPage(ns, pageOf(tc.flush-1)+PageSize); p != nil || err != nil {
				t.Fatalf("page beyond the flush still stored (%v)", err)
			}
		})
	}
	// Caught up to generation 5's start: its data is of generation 5.
	feed(t, k, ns, pageCut, lagStart+100, 5000, 1<<20)
	if in := info(t, c, ns); in.Gen != 5 || in.DataGen != 5 {
		t.Fatalf("after catching up: %+v, want gen and data gen 5", in)
	}
	body := fmt.Sprintf(`{"ns": %d, "conn": %q, "slot": "wk_fence", "gen": 1}`, ns, conn)
	if got, msg := rawStatus(t, "POST", fmt.Sprintf("%s/v1/wal/%d/follow", srv.URL, ns), nil, body); got != http.StatusConflict {
		t.Fatalf("stale follow: %d (%s), want 409", got, msg)
	}
}

// TestHTTPFollowSyncCommit: a compute's commits wait for a keeper that
// streams through the HTTP API; when the compute node's connection to the
// keeper goes, the stream stops and commits wait until it follows again.
func TestHTTPFollowSyncCommit(t *testing.T) {
	o := requirePG(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newCluster(t, o)
	c.start("-c", "synchronous_standby_names=ANY 1 (wk_http)", "-c", "synchronous_commit=on")
	k, srv, cl := openServed(t)
	const ns = 8
	admin := c.connect(ctx)
	from := parseLSN(t, query(ctx, t, admin, "SELECT pg_current_wal_lsn()"))
	req := FollowRequest{NS: ns, ConnString: c.connString(), Slot: "wk_http", AppName: "wk_http",
		From: from, Gen: 1, GenStart: from}
	f, err := cl.Follow(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if in := info(t, cl, ns); !in.Streaming || in.Gen != 1 || in.GenStart != from {
		t.Fatalf("Info while following: %+v", in)
	}
	query(ctx, t, admin, "CREATE TABLE t (i int)")
	for i := range 50 {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		query(cctx, t, admin, fmt.Sprintf("INSERT INTO t VALUES (%d)", i))
		ccancel()
	}
	flushed := parseLSN(t, query(ctx, t, admin, "SELECT pg_current_wal_flush_lsn()"))
	waitFor(t, 10*time.Second, "the keeper's flush", func() bool { return info(t, k, ns).Flush >= flushed })
	waitFor(t, 10*time.Second, "the follower's flush", func() bool { return f.FlushLSN() >= flushed })
	if in := info(t, k, ns); in.Start != pageOf(from) {
		t.Fatalf("Start %s, want %s", fmtLSN(in.Start), fmtLSN(pageOf(from)))
	}
	if st := query(ctx, t, admin, "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'wk_http'"); st != "quorum" && st != "sync" {
		t.Fatalf("sync_state %q", st)
	}

	// The compute node's connection to the keeper goes away.
	srv.CloseClientConnections()
	select {
	case <-f.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("follower still running after its connection was closed")
	}
	if f.Err() == nil {
		t.Fatal("follower ended without an error")
	}
	waitFor(t, 10*time.Second, "the keeper's stream to stop", func() bool { return !info(t, k, ns).Streaming })

	// A commit now waits for a synchronous standby.
	client := c.connect(ctx)
	result := make(chan error, 1)
	go func() {
		_, err := client.Exec(ctx, "INSERT INTO t VALUES (-1)").ReadAll()
		result <- err
	}()
	waitFor(t, 10*time.Second, "a commit to wait for the keeper", func() bool {
		return query(ctx, t, admin, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == "1"
	})
	select {
	case err := <-result:
		t.Fatalf("INSERT returned without the keeper: %v", err)
	default:
	}

	// Following again resumes where the keeper stopped; the commit
	// completes.
	f2, err := cl.Follow(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-result:
		if err != nil {
			t.Fatalf("INSERT: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("INSERT still waits with the keeper following again")
	}
	if n := query(ctx, t, admin, "SELECT count(*) FROM t"); n != "51" {
		t.Fatalf("%s rows", n)
	}
	flushed = parseLSN(t, query(ctx, t, admin, "SELECT pg_current_wal_flush_lsn()"))
	waitFor(t, 10*time.Second, "the resumed follower's flush", func() bool { return f2.FlushLSN() >= flushed })
	if in := info(t, k, ns); in.Start != pageOf(from) || in.Flush < flushed || in.Gen != 1 {
		t.Fatalf("Info after resuming: %+v", in)
	}
	f2.Stop()
	select {
	case <-f2.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if err := f2.Err(); err != nil {
		t.Fatalf("stopped follower: %v", err)
	}
	waitFor(t, 10*time.Second, "the keeper's stream to stop after Stop", func() bool { return !info(t, k, ns).Streaming })
}

// TestHTTPToken: a keeper with a token answers 401 without it (healthz
// excepted) and serves a client that sends it.
func TestHTTPToken(t *testing.T) {
	k := openTest(t, t.TempDir())
	t.Cleanup(func() { _ = k.Close() })
	srv := httptest.NewServer(Handler(k, nil, "s3cret"))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	for _, tc := range []struct {
		token string
		ok    bool
	}{{"", false}, {"wrong", false}, {"s3cret", true}} {
		c, err := NewClient(srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.WithToken(tc.token).Info(ctx, 1)
		if (err == nil) != tc.ok || (!tc.ok && !strings.Contains(err.Error(), "401")) {
			t.Errorf("token %q: %v", tc.token, err)
		}
	}
	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz without a token: %v %v", resp, err)
	}
	resp.Body.Close()
}

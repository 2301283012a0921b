package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/config"
)

// serverlessDriver installs testdata/serverless (Neon's
// @neondatabase/serverless and ws, versions pinned by its package-lock.json)
// once per lock file, and returns the directory to run node in.
func serverlessDriver(t *testing.T) string {
	t.Helper()
	for _, bin := range []string{"node", "npm"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (make test installs nodejs and npm): %v", bin, err)
		}
	}
	src, err := filepath.Abs("testdata/serverless")
	if err != nil {
		t.Fatal(err)
	}
	lock, err := os.ReadFile(filepath.Join(src, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(lock)
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	mods := filepath.Join(cache, "neonproxy", "serverless-"+hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(filepath.Join(mods, "node_modules", "@neondatabase", "serverless")); err != nil {
		tmp, err := os.MkdirTemp(filepath.Dir(mods), "serverless-tmp-")
		if err == nil {
			for _, f := range []string{"package.json", "package-lock.json"} {
				b, _ := os.ReadFile(filepath.Join(src, f))
				if err = os.WriteFile(filepath.Join(tmp, f), b, 0o644); err != nil {
					break
				}
			}
		}
		if err == nil {
			out, cerr := runCmd(t, nil, "npm", "ci", "--prefix", tmp, "--no-audit", "--no-fund")
			if cerr != nil {
				t.Fatalf("npm ci: %v\n%s", cerr, out)
			}
			_ = os.RemoveAll(mods)
			err = os.Rename(tmp, mods)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// The scripts run from a copy next to node_modules, so that imports
	// resolve there.
	run, err := os.MkdirTemp("", "np-serverless-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	for _, f := range []string{"package.json", "neon-config.mjs", "check.mjs"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(run, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(mods, "node_modules"), filepath.Join(run, "node_modules")); err != nil {
		t.Fatal(err)
	}
	return run
}

// TestServerlessDriver runs Neon's serverless driver, unchanged and
// configured as docs/serverless-driver.md shows, against http_listen: a
// neon() query with parameters, transaction batches, a query error, a
// Pool transaction over WebSocket, and 50 concurrent HTTP queries that
// wake a stopped branch once.
func TestServerlessDriver(t *testing.T) {
	dir := serverlessDriver(t)
	e := newEnv(t, func(c *config.Config) { c.HTTPListen = "127.0.0.1:0" })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	api := &admin.Client{BaseURL: e.srv.AdminAddr().String()}
	if _, err := api.CreateBranch(ctx, "cold", "main"); err != nil {
		t.Fatal(err)
	}
	if st := e.srv.Computes.Status("cold"); st.State != "stopped" || st.Generation != 0 {
		t.Fatalf("cold: %+v", st)
	}
	host := e.srv.Addr().String()
	conn := func(db string) string { return "postgresql://postgres:" + testPassword + "@" + host + "/" + db }
	cmd := exec.CommandContext(ctx, "node", "check.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NEONPROXY_HTTP="+e.srv.HTTPAddr().String(), "NEONPROXY_HTTP_TLS=false",
		"NEONPROXY_URL="+conn("main"), "NEONPROXY_COLD_URL="+conn("cold"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("node check.mjs: %v\nstderr:\n%s\nstdout:\n%s", err, redact(stderr.String()), redact(string(stdout)))
	}
	var got struct {
		Params           []map[string]any
		Batch            []map[string]any
		BatchError       string
		AfterFailedBatch []map[string]any
		Error            struct{ Code, Message, Position string }
		WS               []map[string]any
		Cold             []float64
	}
	if err := json.Unmarshal(stdout, &got); err != nil {
		t.Fatalf("output: %v\n%s", err, stdout)
	}
	if want := []map[string]any{{"sum": 5.0, "t": "hé", "n": nil}}; !reflect.DeepEqual(got.Params, want) {
		t.Errorf("params: got %v, want %v", got.Params, want)
	}
	if len(got.Batch) != 1 || got.Batch[0]["n"] != 2.0 {
		t.Errorf("batch: %v", got.Batch)
	}
	if got.BatchError != "22012" || len(got.AfterFailedBatch) != 1 || got.AfterFailedBatch[0]["n"] != 2.0 {
		t.Errorf("failed batch: error %q, then %v rows (want 22012 and 2: rolled back)", got.BatchError, got.AfterFailedBatch)
	}
	if got.Error.Code != "42P01" || !strings.Contains(got.Error.Message, `relation "no_such_table" does not exist`) || got.Error.Position != "15" {
		t.Errorf("query error: %+v", got.Error)
	}
	wantWS := []map[string]any{{"id": 1.0, "v": "a!"}, {"id": 2.0, "v": "b"}, {"id": 10.0, "v": "over ws"}}
	if !reflect.DeepEqual(got.WS, wantWS) {
		t.Errorf("Pool over WebSocket: got %v, want %v", got.WS, wantWS)
	}
	if len(got.Cold) != 50 {
		t.Fatalf("cold: %d results", len(got.Cold))
	}
	for i, v := range got.Cold {
		if v != float64(i) {
			t.Fatalf("cold result %d = %v", i, v)
		}
	}
	if st := e.srv.Computes.Status("cold"); st.Generation != 1 {
		t.Errorf("cold branch started %d times for 50 concurrent requests, want once", st.Generation)
	}
}

// TestServerlessDocSnippet: the neonConfig the document shows is the one
// the test runs.
func TestServerlessDocSnippet(t *testing.T) {
	doc, err := os.ReadFile("../docs/serverless-driver.md")
	if err != nil {
		t.Fatal(err)
	}
	snippet, err := os.ReadFile("testdata/serverless/neon-config.mjs")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), "```js\n"+string(snippet)+"```") {
		t.Fatal("docs/serverless-driver.md does not show testdata/serverless/neon-config.mjs verbatim")
	}
}

// TestSQLOverHTTPEdges: /sql's refusals and limits, the branch's allow
// list on the HTTP path, and a Go pgwire client over the WebSocket tunnel.
func TestSQLOverHTTPEdges(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.HTTPListen = "127.0.0.1:0"
		c.HTTP.RequestTimeout = config.Duration(2 * time.Second)
		c.HTTP.MaxResponseBytes = config.Bytes(4096)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	base := "http://" + e.srv.HTTPAddr().String()
	good := "postgresql://postgres:" + testPassword + "@" + e.srv.Addr().String() + "/main"
	post := func(conn, body string, hdr ...string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, "POST", base+"/sql", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if conn != "" {
			req.Header.Set("Neon-Connection-String", conn)
		}
		req.Header.Set("Neon-Array-Mode", "true")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("response body: %v", err)
		}
		return resp.StatusCode, out
	}
	tests := []struct {
		name, conn, body string
		hdr              []string
		status           int
		code, msg        string
	}{
		{"no connection string", "", `{"query":"select 1","params":[]}`, nil, 400, "08004", "missing the Neon-Connection-String header"},
		{"not JSON", good, `select 1`, nil, 400, "08P01", "invalid request body"},
		{"wrong password", strings.Replace(good, testPassword, "nope", 1), `{"query":"select 1","params":[]}`, nil, 400, "28P01", "password authentication failed"},
		{"unknown branch", good + "?options=endpoint%3Dnosuch", `{"query":"select 1","params":[]}`, nil, 400, "3D000", `branch "nosuch" does not exist`},
		{"too big", good, `{"query":"select repeat('x', 100) from generate_series(1, 100)","params":[]}`, nil, 400, "54000", "larger than the limit of 4096 bytes"},
		{"too slow", good, `{"query":"select pg_sleep(10)","params":[]}`, nil, 400, "57014", "longer than 2s"},
		{"bad isolation", good, `{"queries":[{"query":"select 1","params":[]}]}`, []string{"Neon-Batch-Isolation-Level", "Sometimes"}, 400, "08P01", `unknown Neon-Batch-Isolation-Level "Sometimes"`},
		{"ok after all that", good, `{"query":"select $1::int * 2 as d, $2::text is null as n","params":["21",null]}`, nil, 200, "", ""},
	}
	for _, tc := range tests {
		status, out := post(tc.conn, tc.body, tc.hdr...)
		if status != tc.status || tc.code != "" && (out["code"] != tc.code || !strings.Contains(fmt.Sprint(out["message"]), tc.msg)) {
			t.Errorf("%s: HTTP %d %v, want %d %s %q", tc.name, status, out, tc.status, tc.code, tc.msg)
		}
		if tc.status == 200 {
			rows, _ := json.Marshal(out["rows"])
			if string(rows) != `[["42","t"]]` || out["command"] != "SELECT" || out["rowCount"] != 1.0 {
				t.Errorf("%s: %v", tc.name, out)
			}
		}
	}
	for path, want := range map[string]int{"/sql": 405, "/nosuch": 404} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}

	// pgwire over the WebSocket tunnel from a Go client (pgconn).
	wsConfig := func() *pgconn.Config {
		cfg, err := pgconn.ParseConfig(good + "?sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, _, err := websocket.Dial(ctx, "ws://"+e.srv.HTTPAddr().String()+"/v2", nil)
			if err != nil {
				return nil, err
			}
			return websocket.NetConn(context.Background(), c, websocket.MessageBinary), nil
		}
		return cfg
	}
	pc, err := pgconn.ConnectConfig(ctx, wsConfig())
	if err != nil {
		t.Fatalf("pgwire over WebSocket: %v", err)
	}
	res, err := pc.Exec(ctx, "select current_database(), 6 * 7").ReadAll()
	pc.Close(ctx)
	if err != nil || len(res) != 1 || string(res[0].Rows[0][1]) != "42" {
		t.Fatalf("query over WebSocket: %v %v", res, err)
	}

	// The branch's allow list holds on both HTTP paths (the HTTP client's
	// address is the client's).
	api := &admin.Client{BaseURL: e.srv.AdminAddr().String()}
	only := []string{"10.0.0.0/8"}
	if _, err := api.UpdateBranch(ctx, "main", admin.BranchSettings{AllowedIPs: &only}); err != nil {
		t.Fatal(err)
	}
	if status, out := post(good, `{"query":"select 1","params":[]}`); status != 400 || out["code"] != "28000" ||
		!strings.Contains(fmt.Sprint(out["message"]), "connection from IP address 127.0.0.1 is not allowed") {
		t.Errorf("/sql from a disallowed address: %d %v", status, out)
	}
	_, err = pgconn.ConnectConfig(ctx, wsConfig())
	wantPgError(t, err, "28000", "connection from IP address 127.0.0.1 is not allowed")
}

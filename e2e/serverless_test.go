package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

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

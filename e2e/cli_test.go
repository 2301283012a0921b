package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/cli"
	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/proxy"
)

// runCLI runs the neonproxy command tree in-process against e's admin API.
func runCLI(t *testing.T, e *env, args ...string) (string, error) {
	t.Helper()
	root := cli.Root()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"--admin", e.srv.AdminAddr().String()}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// TestCLIAndAdminAPI drives branches through the CLI and the HTTP API and
// checks that the data and compute states follow.
func TestCLIAndAdminAPI(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 1000) g"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	// A clean stop stores main's data in the pagestore.
	if out, err := runCLI(t, e, "compute", "suspend", "main"); err != nil || !strings.Contains(out, "branch main: compute stopped") {
		t.Fatalf("compute suspend main: %v\n%s", err, out)
	}
	if c, err = pgx.Connect(ctx, e.url("postgres", testPassword, "main")); err != nil {
		t.Fatal(err)
	}
	// main runs with a client while dev is created from its stored image.
	out, err := runCLI(t, e, "branch", "create", "dev")
	if err != nil || !regexp.MustCompile(`created branch dev \(parent main at [0-9A-F]+/[0-9A-F]+\)`).MatchString(out) {
		t.Fatalf("branch create: %v\n%s", err, out)
	}
	if _, err := c.Exec(ctx, "INSERT INTO items VALUES (1001)"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	if n := e.mustQueryInt(e.url("postgres", testPassword, "dev"), "SELECT count(*) FROM items"); n != 1000 {
		t.Fatalf("dev sees %d rows, want the 1000 of the branch point", n)
	}
	if n := e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT count(*) FROM items"); n != 1001 {
		t.Fatalf("main sees %d rows", n)
	}

	out, err = runCLI(t, e, "branch", "list")
	if err != nil || !regexp.MustCompile(`(?m)^main\s+-\s+running[^\n]*\n└── dev\s+[0-9A-F]+/[0-9A-F]+\s+running`).MatchString(out) {
		t.Fatalf("branch list: %v\n%s", err, out)
	}
	out, err = runCLI(t, e, "branch", "show", "dev")
	var bj admin.BranchJSON
	if err != nil || json.Unmarshal([]byte(out), &bj) != nil {
		t.Fatalf("branch show: %v\n%s", err, out)
	}
	if bj.Name != "dev" || bj.Parent != "main" || bj.ParentLSN == "" || bj.Compute.State != "running" || bj.LogicalSizeBytes <= 0 ||
		bj.UniqueBytes != 0 || bj.Timeline == 0 || !bj.UnstoredChanges || bj.CreatedAt.IsZero() {
		t.Fatalf("branch JSON %+v", bj)
	}
	out, err = runCLI(t, e, "compute", "suspend", "dev")
	if err != nil || !strings.Contains(out, "branch dev: compute stopped") {
		t.Fatalf("compute suspend: %v\n%s", err, out)
	}
	// Stopped, dev holds in the store only what it changed.
	if bj, err = (&admin.Client{BaseURL: "http://" + e.srv.AdminAddr().String()}).GetBranch(ctx, "dev"); err != nil || bj.UnstoredChanges || bj.UniqueBytes <= 0 ||
		bj.UniqueBytes > bj.LogicalSizeBytes/4 || bj.LocalBytes <= 0 {
		t.Fatalf("dev after suspend: %+v, %v", bj, err)
	}

	// branch set: the settings land in the branch JSON; "" clears the list.
	out, err = runCLI(t, e, "branch", "set", "dev", "--allowed-ips", "203.0.113.7, 10.0.0.0/8", "--max-client-conn", "9")
	if err != nil || json.Unmarshal([]byte(out), &bj) != nil || !slices.Equal(bj.AllowedIPs, []string{"203.0.113.7", "10.0.0.0/8"}) || bj.MaxClientConn != 9 {
		t.Fatalf("branch set: %v\n%s", err, out)
	}
	out, err = runCLI(t, e, "branch", "set", "dev", "--allowed-ips", "")
	if err != nil || json.Unmarshal([]byte(out), &bj) != nil || len(bj.AllowedIPs) != 0 || bj.MaxClientConn != 9 {
		t.Fatalf("branch set --allowed-ips '': %v\n%s", err, out)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"branch", "set", "dev", "--allowed-ips", "10.0.0.0/99"}, "400"},
		{[]string{"branch", "set", "nosuch", "--max-client-conn", "1"}, "404"},
		{[]string{"branch", "set", "dev"}, "nothing to set"},
		{[]string{"branch", "create", "dev"}, "409"},
		{[]string{"branch", "create", "Bad_Name"}, "400"},
		{[]string{"branch", "create", "x", "--parent", "nosuch"}, "404"},
		{[]string{"branch", "create", "x", "--lsn", "0/16B3748"}, "400"},
		{[]string{"branch", "show", "nosuch"}, "404"},
		{[]string{"branch", "delete", "main"}, "409"},
		{[]string{"compute", "suspend", "nosuch"}, "404"},
	} {
		if out, err := runCLI(t, e, tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: want HTTP %s error, got %v\n%s", tt.args, tt.want, err, out)
		}
	}

	out, err = runCLI(t, e, "branch", "delete", "dev")
	if err != nil || !strings.Contains(out, "deleted branch dev") {
		t.Fatalf("branch delete: %v\n%s", err, out)
	}
	_, err = pgx.Connect(ctx, e.url("postgres", testPassword, "dev.postgres"))
	wantPgError(t, err, "3D000", `branch "dev" does not exist`)
	if _, err := os.Stat(filepath.Join(e.cfg.DataDir, "computes", "branches", "dev")); !os.IsNotExist(err) {
		t.Fatalf("dev's data is still there: %v", err)
	}

	// Health and metrics are served next to the API.
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/metrics": "neonproxy_connections_total{result=\"ok\"}",
	} {
		resp, err := http.Get("http://" + e.srv.AdminAddr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Fatalf("GET %s: %d\n%s", path, resp.StatusCode, body)
		}
	}
}

// TestServeBinary builds neonproxy, runs `serve` as a newcomer would, uses
// the printed connection string with psql, and checks that SIGTERM stops
// every compute.
func TestServeBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	dir, err := os.MkdirTemp("", "np-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t, dir)
	cfgPath := filepath.Join(dir, "config.yaml")
	cfg := fmt.Sprintf("listen: 127.0.0.1:%d\nadmin_listen: 127.0.0.1:%d\ndata_dir: %s\nlog:\n  level: info\n",
		freePort(t), freePort(t), filepath.Join(dir, "data"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", cfgPath)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})

	connRE := regexp.MustCompile(`psql '(postgres://postgres:[^@']+@127\.0\.0\.1:\d+/main)'`)
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var connString string
	timeout := time.After(2 * time.Minute)
	for connString == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("serve ended before printing a connection string:\n%s", stderr.String())
			}
			if m := connRE.FindStringSubmatch(l); m != nil {
				connString = m[1]
			}
		case <-timeout:
			t.Fatalf("no connection string printed:\n%s", stderr.String())
		}
	}
	go func() {
		for range lines {
		}
	}()
	out, err := runCmd(t, nil, "psql", "-X", "-At", connString, "-c", "SELECT 'hello from ' || current_database()")
	if err != nil || strings.TrimSpace(out) != "hello from postgres" {
		t.Fatalf("psql with the printed connection string: %v\n%s", err, out)
	}
	// The generated password is kept for the next start, readable only by
	// its owner.
	fi, err := os.Stat(filepath.Join(dir, "data", "credentials"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v %v", fi, err)
	}
	if len(postgresProcesses(dir)) == 0 {
		t.Fatal("no compute running while a client was served")
	}

	// SIGHUP rotates the certificate (re-read from the same files) without
	// dropping a connection.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addr := regexp.MustCompile(`@(127\.0\.0\.1:\d+)/`).FindStringSubmatch(connString)[1]
	held, err := pgx.Connect(ctx, connString+"?sslmode=require")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(ctx)
	before := frontDoorCert(t, addr)
	tlsDir := filepath.Join(dir, "data", "tls")
	for _, f := range []string{"server.crt", "server.key"} {
		if err := os.Remove(filepath.Join(tlsDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := proxy.TLSFiles("", "", tlsDir, config.Default().TLS.SNISuffix); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new certificate to be served", func() bool { return frontDoorCert(t, addr) != before })
	var one int
	if err := held.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("a connection across SIGHUP: %v", err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve exited with %v:\n%s", err, stderr.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("serve did not exit on SIGTERM")
	}
	if left := postgresProcesses(dir); len(left) > 0 {
		t.Fatalf("computes left running after SIGTERM: %v", left)
	}
}

// TestAdminToken: with admin.token the admin API answers 401 without it
// (but /healthz), the CLI sends it from the config; and an admin_listen
// beyond loopback without a token is refused at start.
func TestAdminToken(t *testing.T) {
	const token = "admin-s3cret"
	e := newEnvWithFile(t, func(c *config.Config) { c.Admin.Token = token })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	base := "http://" + e.srv.AdminAddr().String()
	get := func(path, auth string) int {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		path, auth string
		want       int
	}{
		{"/v1/branches", "", http.StatusUnauthorized},
		{"/v1/branches", "wrong", http.StatusUnauthorized},
		{"/metrics", "", http.StatusUnauthorized},
		{"/v1/branches", token, http.StatusOK},
		{"/healthz", "", http.StatusOK},
	} {
		if got := get(tc.path, tc.auth); got != tc.want {
			t.Errorf("GET %s with %q: %d, want %d", tc.path, tc.auth, got, tc.want)
		}
	}
	if out, err := runCLI(t, e, "--config", e.configPath, "branch", "list"); err != nil || !strings.Contains(out, "main") {
		t.Fatalf("CLI with the config's token: %v\n%s", err, out)
	}
	if log, _ := os.ReadFile(e.logPath); strings.Contains(string(log), token) {
		t.Fatal("the admin token is in the log")
	}
}

// frontDoorCert is the fingerprint of the certificate the front door at
// addr serves (SSLRequest, TLS handshake).
func frontDoorCert(t *testing.T, addr string) [32]byte {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc, err := pgwire.StartTLS(context.Background(), conn, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // test certificate
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(tc.ConnectionState().PeerCertificates[0].Raw)
}

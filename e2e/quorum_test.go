package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/config"
)

// buildBinary builds cmd/neonproxy into dir and returns its path.
func buildBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "neonproxy")
	build := exec.Command("go", "build", "-o", bin, "../cmd/neonproxy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// keeperToken is the keepers' shared secret in these tests (walkeeper.token).
const keeperToken = "t0k3n"

// serviceProc is a standalone `neonproxy walkeeper` or `neonproxy
// pagestore` process.
type serviceProc struct {
	t    *testing.T
	bin  string
	kind string // walkeeper or pagestore: the command and config section
	// serve runs `neonproxy serve` with roles: [kind] instead of
	// `neonproxy kind`.
	serve bool
	cfg   string // its config file
	addr  string
	log   string
	cmd   *exec.Cmd
	done  chan struct{}
}

// keeperProc is a standalone keeper.
type keeperProc = serviceProc

func startKeeperProc(t *testing.T, bin, dir string, n int) *keeperProc {
	return startServiceProc(t, bin, filepath.Join(dir, fmt.Sprintf("wk%d", n)), "walkeeper")
}

// startServiceProc runs `neonproxy kind` with its data in dir, listening
// on a free loopback port with keeperToken as its token.
func startServiceProc(t *testing.T, bin, dir, kind string) *serviceProc {
	t.Helper()
	return startServiceProcAs(t, bin, dir, kind, false)
}

// startServiceProcAs is startServiceProc, through `neonproxy serve` with
// roles: [kind] when serve is set.
func startServiceProcAs(t *testing.T, bin, dir, kind string, serve bool) *serviceProc {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	k := &serviceProc{t: t, bin: bin, kind: kind, serve: serve, cfg: filepath.Join(dir, "config.yaml"), addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		log: filepath.Join(dir, kind+".log")}
	cfg := fmt.Sprintf("data_dir: %s\n%s:\n  listen: %s\n  token: %s\nlog:\n  level: info\n", dir, kind, k.addr, keeperToken)
	if serve {
		cfg += fmt.Sprintf("roles: [%s]\n", kind)
	}
	if err := os.WriteFile(k.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	k.start()
	t.Cleanup(k.kill)
	return k
}

// start runs the keeper and waits until it serves.
func (k *serviceProc) start() {
	k.t.Helper()
	logf, err := os.OpenFile(k.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		k.t.Fatal(err)
	}
	defer logf.Close()
	k.cmd = exec.Command(k.bin, k.kind, "--config", k.cfg)
	if k.serve {
		k.cmd = exec.Command(k.bin, "serve", "--config", k.cfg)
	}
	k.cmd.Stderr = logf
	out, err := k.cmd.StdoutPipe()
	if err != nil {
		k.t.Fatal(err)
	}
	if err := k.cmd.Start(); err != nil {
		k.t.Fatal(err)
	}
	k.done = make(chan struct{})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if !ok && strings.HasPrefix(sc.Text(), k.kind+" is ready") {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
	}()
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(k.cmd, k.done)
	select {
	case ok := <-ready:
		if !ok {
			b, _ := os.ReadFile(k.log)
			k.t.Fatalf("%s %s exited before it was ready:\n%s", k.kind, k.addr, tail(string(b), 20))
		}
	case <-time.After(time.Minute):
		k.t.Fatalf("%s %s not ready after a minute", k.kind, k.addr)
	}
}

// kill ends the process with SIGKILL: no clean shutdown of anything.
func (k *serviceProc) kill() {
	if k.cmd == nil || k.cmd.Process == nil {
		return
	}
	_ = k.cmd.Process.Signal(syscall.SIGKILL)
	<-k.done
}

// flush asks the keeper how far it has the WAL of namespace ns.
func (k *keeperProc) flush(ctx context.Context, ns uint64) (uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/v1/wal/%d", k.addr, ns), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+keeperToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var in struct {
		Flush uint64 `json:"flush"`
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("keeper %s: %s", k.addr, resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&in)
	return in.Flush, err
}

// TestKeeperQuorum: three standalone keepers (`neonproxy walkeeper`
// processes), quorum 2. Clients commit as fast as they can while one
// keeper is killed with SIGKILL: commits go on (the longest commit is
// logged), the branch JSON shows which keeper is down, and the keeper
// brought back catches up. Then neonproxy "crashes", the compute is killed
// and its local directory deleted while another keeper is down: the restart
// recovers every acknowledged commit from the two keepers left.
func TestKeeperQuorum(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	kdir, err := os.MkdirTemp("", "np-keepers-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(kdir) })
	bin := buildBinary(t, kdir)
	keepers := []*keeperProc{startKeeperProc(t, bin, kdir, 1), startKeeperProc(t, bin, kdir, 2), startKeeperProc(t, bin, kdir, 3)}
	e := newEnv(t, func(c *config.Config) {
		c.Walkeeper.Peers = []string{keepers[0].addr, keepers[1].addr, keepers[2].addr}
		c.Walkeeper.Quorum = 2
		c.Walkeeper.Token = keeperToken
	})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	url := e.url("postgres", testPassword, "main")
	api := &admin.Client{BaseURL: e.srv.AdminAddr().String()}
	setup, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	var standbys string
	if err := setup.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&standbys); err != nil || standbys != "ANY 2 (wk1, wk2, wk3)" {
		t.Fatalf("synchronous_standby_names = %q, %v", standbys, err)
	}
	if _, err := setup.Exec(ctx, "CREATE TABLE acked (id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)

	// Writers commit until stopped, recording each acknowledged id and the
	// longest commit.
	w := newAckWriters()
	countAcked := w.count
	wctx, stopWriters := context.WithCancel(ctx)
	w.run(wctx, url, 4)
	waitFor(t, "commits before the kill", func() bool { return countAcked() >= 300 })
	w.resetLongest()
	before := countAcked()
	keepers[1].kill() // wk2
	killedAt := time.Now()
	waitFor(t, "commits after a keeper was killed", func() bool { return countAcked() >= before+500 })
	stall := w.longestCommit()
	t.Logf("wk2 killed: %d commits in the %s after, longest commit %s", countAcked()-before,
		time.Since(killedAt).Round(time.Millisecond), stall.Round(time.Microsecond))
	waitFor(t, "the branch JSON to show wk2 down", func() bool {
		b, err := api.GetBranch(ctx, "main")
		return err == nil && b.WALKeeper != nil && b.WALKeeper.State == "streaming" &&
			keeperState(b.WALKeeper, "wk2") == "disconnected" && keeperState(b.WALKeeper, "wk1") == "streaming"
	})

	// Back: it catches up from its own flush position (the compute kept
	// the WAL for its slot).
	keepers[1].start()
	waitFor(t, "wk2 to stream again", func() bool {
		b, err := api.GetBranch(ctx, "main")
		return err == nil && b.WALKeeper != nil && keeperState(b.WALKeeper, "wk2") == "streaming"
	})
	b, err := api.GetBranch(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	ns := b.Timeline
	target := countAcked() + 200
	waitFor(t, "more commits", func() bool { return countAcked() >= target })
	f1, err := keepers[0].flush(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "wk2 to catch up with wk1", func() bool {
		f2, err := keepers[1].flush(ctx, ns)
		return err == nil && f2 >= f1
	})

	// Crash everything but two keepers; one of them is the one that was
	// away.
	e.crashMain(ctx, func() {
		stopWriters()
		w.wait()
		keepers[0].kill() // wk1
	})
	e.start()
	rows, missing := w.check(t, ctx, url)
	t.Logf("recovered with wk1 down: %d acknowledged, %d rows, %d missing", w.count(), rows, len(missing))
	if len(missing) > 0 {
		t.Fatalf("%d acknowledged commits lost, first %v", len(missing), missing[:min(len(missing), 10)])
	}
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	// Commits go on with two keepers.
	if _, err := c.Exec(ctx, "INSERT INTO acked VALUES (-1)"); err != nil {
		t.Fatalf("commit with wk1 down: %v", err)
	}
}

func keeperState(w *admin.WALKeeperJSON, name string) string {
	for _, k := range w.Keepers {
		if k.Name == name {
			return k.State
		}
	}
	return ""
}

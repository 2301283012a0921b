package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	pgbouncerBin        = "/usr/sbin/pgbouncer"
	pgbouncerOSUser     = "postgres"
	pgbouncerStartLimit = 15 * time.Second
	pgbouncerStopLimit  = 10 * time.Second
)

// errNoPgBouncer means PgBouncer is not installed; its rows are skipped.
var errNoPgBouncer = errors.New("pgbouncer: not installed (apt-get install pgbouncer)")

// pgbouncerConfig is what differs between the bench's PgBouncers.
type pgbouncerConfig struct {
	dir           string // subdirectory of the temp dir
	poolMode      string // session | transaction
	authType      string // trust | scram-sha-256
	userlist      string // auth_file content
	poolSize      int
	maxClientConn int
}

// sessionPgBouncer is the session-mode, trust-auth PgBouncer of the
// latency and pgbench sections.
func sessionPgBouncer(o options) pgbouncerConfig {
	return pgbouncerConfig{dir: "pgbouncer", poolMode: "session", authType: "trust",
		userlist: `"postgres" ""` + "\n", poolSize: o.poolSize, maxClientConn: 1000}
}

// transactionPgBouncer is the pooling section's PgBouncer: transaction
// mode, SCRAM with the postgres role's verifier from the compute.
func transactionPgBouncer(o options, verifier string) pgbouncerConfig {
	return pgbouncerConfig{dir: "pgbouncer-tx", poolMode: "transaction", authType: "scram-sha-256",
		userlist: fmt.Sprintf("%q %q\n", "postgres", verifier), poolSize: o.poolSize, maxClientConn: maxClientConn(o)}
}

// maxClientConn is the client limit of neonproxy and the transaction-mode
// PgBouncer: the idle clients plus room for pgbench's.
func maxClientConn(o options) int { return o.idleClients + 1000 }

// pgbouncer is a running PgBouncer in front of the compute.
type pgbouncer struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	port    int
	dir     string
	version string
	cfg     pgbouncerConfig
}

// pgbouncerPath returns the PgBouncer binary or errNoPgBouncer.
func pgbouncerPath() (string, error) {
	if _, err := os.Stat(pgbouncerBin); err == nil {
		return pgbouncerBin, nil
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	return "", errNoPgBouncer
}

// startPgBouncer configures PgBouncer to reach the compute on its unix
// socket (socketDir, port) and starts it as the OS user postgres.
func startPgBouncer(ctx context.Context, e *env, cfg pgbouncerConfig, socketDir string, computePort int) (*pgbouncer, error) {
	bin, err := pgbouncerPath()
	if err != nil {
		return nil, err
	}
	pb := &pgbouncer{dir: e.path(cfg.dir), exited: make(chan struct{}), cfg: cfg}
	pb.version = commandFirstLine(ctx, bin, "--version")
	ini, err := pb.writeFiles(socketDir, computePort)
	if err != nil {
		return nil, err
	}
	args := []string{ini}
	if os.Geteuid() == 0 {
		// PgBouncer refuses to run as root; -u switches user after start.
		args = []string{"-u", pgbouncerOSUser, ini}
	}
	pb.cmd = exec.Command(bin, args...)
	pb.cmd.Env = cleanEnv()
	pb.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := os.Create(filepath.Join(pb.dir, "stderr.log"))
	if err != nil {
		return nil, fmt.Errorf("pgbouncer stderr file: %w", err)
	}
	defer stderr.Close() // the child has its own descriptor
	pb.cmd.Stderr = stderr
	if err := pb.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start pgbouncer: %w", err)
	}
	go func() { pb.cmd.Wait(); close(pb.exited) }()
	if err := pb.awaitListening(ctx); err != nil {
		pb.stop()
		return nil, fmt.Errorf("pgbouncer did not start: %w\n--- pgbouncer.log ---\n%s\n--- stderr ---\n%s", err,
			tail(filepath.Join(pb.dir, "pgbouncer.log"), 15), tail(filepath.Join(pb.dir, "stderr.log"), 15))
	}
	return pb, nil
}

// writeFiles writes the ini and auth file into a directory owned by the
// PgBouncer OS user and returns the ini path.
func (pb *pgbouncer) writeFiles(socketDir string, computePort int) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	pb.port = port
	if err := os.Mkdir(pb.dir, 0o700); err != nil {
		return "", fmt.Errorf("pgbouncer dir: %w", err)
	}
	ini := fmt.Sprintf(`[databases]
%s = host=%s port=%d dbname=postgres user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = %s
auth_file = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = %d
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
logfile = %s
pidfile = %s
`, branch, socketDir, computePort, port, pb.cfg.authType, filepath.Join(pb.dir, "userlist.txt"),
		pb.cfg.poolMode, pb.cfg.poolSize, pb.cfg.maxClientConn,
		filepath.Join(pb.dir, "pgbouncer.log"), filepath.Join(pb.dir, "pgbouncer.pid"))
	files := map[string]string{
		"pgbouncer.ini": ini,
		"userlist.txt":  pb.cfg.userlist,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(pb.dir, name), []byte(content), 0o600); err != nil {
			return "", fmt.Errorf("write pgbouncer %s: %w", name, err)
		}
	}
	if os.Geteuid() == 0 {
		if err := chownTree(pb.dir, pgbouncerOSUser); err != nil {
			return "", err
		}
	}
	return filepath.Join(pb.dir, "pgbouncer.ini"), nil
}

// chownTree gives dir and the files directly in it to the OS user name.
func chownTree(dir, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("look up OS user %s: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	paths := []string{dir}
	for _, en := range entries {
		paths = append(paths, filepath.Join(dir, en.Name()))
	}
	for _, p := range paths {
		if err := os.Chown(p, uid, gid); err != nil {
			return fmt.Errorf("chown %s to %s: %w", p, name, err)
		}
	}
	return nil
}

// awaitListening polls PgBouncer's TCP port.
func (pb *pgbouncer) awaitListening(ctx context.Context) error {
	if err := awaitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", pb.port), pgbouncerStartLimit, pb.exited); err != nil {
		return fmt.Errorf("pgbouncer: %w (%v)", err, pb.cmd.ProcessState)
	}
	return nil
}

// pid is the PgBouncer process id (for its RSS). PgBouncer runs in the
// foreground (-u only switches user), so it is the child itself.
func (pb *pgbouncer) pid() int { return pb.cmd.Process.Pid }

// stop shuts PgBouncer down immediately (SIGTERM); SIGKILL after a while.
func (pb *pgbouncer) stop() {
	select {
	case <-pb.exited:
		return
	default:
	}
	_ = pb.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-pb.exited:
	case <-time.After(pgbouncerStopLimit):
		_ = pb.cmd.Process.Kill()
		<-pb.exited
	}
}

// commandFirstLine runs a version-style command and returns its first line
// of output, or a note when it fails.
func commandFirstLine(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(%s: %v)", name, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

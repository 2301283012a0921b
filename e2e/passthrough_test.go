package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/neonproxy/neonproxy/proxy"
)

// TestSCRAMPassthroughToCompute: a client proves its password to the
// proxy's copy of its verifier; the ClientKey derived from that proof logs
// the proxy in to a real PostgreSQL 15 compute that requires SCRAM for the
// role, without the password (what a node forwarding a client to another
// node's compute does). A key from another password is refused by
// PostgreSQL itself.
func TestSCRAMPassthroughToCompute(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var verifier string
	if _, err := c.Exec(ctx, "CREATE ROLE alice LOGIN PASSWORD 'pencil'"); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'").Scan(&verifier); err != nil {
		t.Fatal(err)
	}
	// The compute asks alice for SCRAM on its socket (neonproxy's own
	// connections are trusted there).
	hba := filepath.Join(e.cfg.DataDir, "computes", "branches", "main", "pgdata", "pg_hba.conf")
	old, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hba, append([]byte("local all alice scram-sha-256\n"), old...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	creds, err := proxy.ParseVerifier(verifier)
	if err != nil {
		t.Fatal(err)
	}
	lease, err := e.srv.Computes.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release()
	sock := filepath.Join(lease.Endpoint.SocketDir, ".s.PGSQL."+strconv.Itoa(lease.Endpoint.Port))

	for _, tc := range []struct {
		password string
		ok       bool
	}{{"pencil", true}, {"crayon", false}} {
		t.Run(tc.password, func(t *testing.T) {
			// The client's exchange with the proxy, against alice's real
			// verifier (a wrong password fails there already; derive its
			// key from a verifier of its own to reach the compute with it).
			vcreds := creds
			if !tc.ok {
				cl, _ := scram.SHA256.NewClient("", tc.password, "")
				vcreds = cl.GetStoredCredentials(creds.KeyFactors)
			}
			key := clientKeyOf(t, "alice", tc.password, vcreds)
			conn, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fe := pgproto3.NewFrontend(conn, conn)
			fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
				Parameters: map[string]string{"user": "alice", "database": "postgres"}})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			msg, err := fe.Receive()
			sasl, ok := msg.(*pgproto3.AuthenticationSASL)
			if err != nil || !ok {
				t.Fatalf("compute asked %T, %v; want SASL", msg, err)
			}
			err = proxy.AuthenticateWithClientKey(fe, sasl, key, creds.ServerKey)
			if !tc.ok {
				if err == nil || !strings.Contains(err.Error(), "28P01") {
					t.Fatalf("a key of another password: %v, want PostgreSQL's 28P01", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for {
				msg, err := fe.Receive()
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := msg.(*pgproto3.ErrorResponse); ok {
					t.Fatalf("compute: %+v", msg)
				}
				if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
					break
				}
			}
			fe.Send(&pgproto3.Query{String: "SELECT current_user"})
			_ = fe.Flush()
			for {
				msg, err := fe.Receive()
				if err != nil {
					t.Fatal(err)
				}
				if d, ok := msg.(*pgproto3.DataRow); ok && string(d.Values[0]) != "alice" {
					t.Fatalf("current_user = %q", d.Values[0])
				}
				if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
					break
				}
			}
		})
	}
}

// clientKeyOf runs a client's SCRAM exchange for user/password against
// creds and returns the ClientKey the proxy derives from it.
func clientKeyOf(t *testing.T, user, password string, creds scram.StoredCredentials) []byte {
	t.Helper()
	client, _ := scram.SHA256.NewClient(user, password, "")
	srv, _ := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	cc, sc := client.NewConversation(), srv.NewConversation()
	clientFirst, _ := cc.Step("")
	serverFirst, err := sc.Step(clientFirst)
	if err != nil {
		t.Fatal(err)
	}
	clientFinal, _ := cc.Step(serverFirst)
	if _, err := sc.Step(clientFinal); err != nil || !sc.Valid() {
		t.Fatalf("client exchange: %v", err)
	}
	key, err := proxy.ClientKeyFrom(creds.StoredKey, clientFirst, serverFirst, clientFinal)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

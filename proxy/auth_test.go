package proxy

import (
	"encoding/base64"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/neonproxy/neonproxy/internal/pgwire"
)

// A verifier as PostgreSQL 15 stores it for password "pencil".
func verifierFor(t testing.TB, password string) string {
	t.Helper()
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		t.Fatal(err)
	}
	salt := "0123456789abcdef"
	creds := client.GetStoredCredentials(scram.KeyFactors{Salt: salt, Iters: 4096})
	return mechSCRAM + "$4096:" + b64(salt) + "$" + b64(string(creds.StoredKey)) + ":" + b64(string(creds.ServerKey))
}

func TestParseVerifier(t *testing.T) {
	good := verifierFor(t, "pencil")
	tests := []struct {
		in string
		ok bool
	}{
		{good, true},
		{"md5c0ffee", false},
		{"", false},
		{"SCRAM-SHA-256$4096:c2FsdA==$only-one-part", false},
		{"SCRAM-SHA-256$x:c2FsdA==$YQ==:YQ==", false},
		{"SCRAM-SHA-256$0:c2FsdA==$YQ==:YQ==", false},
		{"SCRAM-SHA-256$4096:!!!$YQ==:YQ==", false},
		{"SCRAM-SHA-256$4096:c2FsdA==$YQ==:YQ==$extra", false},
	}
	for _, tt := range tests {
		sc, err := ParseVerifier(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseVerifier(%q) = %v", tt.in, err)
		}
		if tt.ok && (sc.Iters != 4096 || sc.Salt != "0123456789abcdef" || len(sc.StoredKey) != 32) {
			t.Errorf("parsed %+v", sc)
		}
	}
}

// TestSCRAMExchange runs the proxy's server side against a real SCRAM
// client over an in-memory connection, as a PostgreSQL client would.
func TestSCRAMExchange(t *testing.T) {
	creds, err := ParseVerifier(verifierFor(t, "pencil"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, password string
		wantOK         bool
	}{
		{"right password", "pencil", true},
		{"wrong password", "crayon", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srvConn, cliConn := net.Pipe()
			defer srvConn.Close()
			defer cliConn.Close()
			errc := make(chan error, 1)
			go func() {
				be := pgproto3.NewBackend(srvConn, srvConn)
				final, err := scramExchange(be, "alice", func() (scram.StoredCredentials, error) { return creds, nil }, scram.ChannelBinding{}, false)
				if err == nil {
					_, err = srvConn.Write(final)
				}
				errc <- err
				srvConn.Close()
			}()
			fe := pgproto3.NewFrontend(cliConn, cliConn)
			clientOK := runSCRAMClient(t, fe, tc.password)
			err := <-errc
			if tc.wantOK {
				if err != nil || !clientOK {
					t.Fatalf("server %v, client ok %v", err, clientOK)
				}
				return
			}
			var ce *pgwire.Error
			if !errors.As(err, &ce) || ce.Code != pgwire.CodeInvalidPassword || !strings.Contains(ce.Message, `user "alice"`) {
				t.Fatalf("want 28P01, got %v", err)
			}
		})
	}
}

// runSCRAMClient plays the client; it reports whether the server's final
// message verified.
func runSCRAMClient(t *testing.T, fe *pgproto3.Frontend, password string) bool {
	t.Helper()
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if sasl, ok := msg.(*pgproto3.AuthenticationSASL); !ok || sasl.AuthMechanisms[0] != mechSCRAM {
		t.Fatalf("got %#v", msg)
	}
	client, _ := scram.SHA256.NewClient("", password, "")
	conv := client.NewConversation()
	first, _ := conv.Step("")
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: mechSCRAM, Data: []byte(first)})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err = fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Fatalf("got %#v", msg)
	}
	final, err := conv.Step(string(cont.Data))
	if err != nil {
		t.Fatal(err)
	}
	fe.Send(&pgproto3.SASLResponse{Data: []byte(final)})
	if err := fe.Flush(); err != nil {
		return false // server hung up
	}
	msg, err = fe.Receive()
	if err != nil {
		return false
	}
	fin, ok := msg.(*pgproto3.AuthenticationSASLFinal)
	if !ok {
		return false
	}
	_, err = conv.Step(string(fin.Data))
	return err == nil && conv.Valid()
}

func TestMockCredentialsStablePerRole(t *testing.T) {
	a, err := newAuthenticator()
	if err != nil {
		t.Fatal(err)
	}
	x1, x2, y := a.mockCredentials("main", "x"), a.mockCredentials("main", "x"), a.mockCredentials("main", "y")
	if x1.Salt != x2.Salt || x1.Salt == y.Salt || x1.Iters != 4096 {
		t.Fatal("mock salt must be stable per role and differ between roles")
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

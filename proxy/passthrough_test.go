package proxy

import (
	"net"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

// TestSCRAMPassthrough: a client proves "pencil" to the proxy's verifier;
// the ClientKey derived from its proof then authenticates the proxy to a
// SCRAM server holding the same verifier (xdg-go/scram's, as PostgreSQL
// answers), without the password. A wrong derivation or another verifier
// fails.
func TestSCRAMPassthrough(t *testing.T) {
	creds, err := ParseVerifier(verifierFor(t, "pencil"))
	if err != nil {
		t.Fatal(err)
	}
	// The client's exchange with the proxy.
	client, _ := scram.SHA256.NewClient("alice", "pencil", "")
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
	key, err := ClientKeyFrom(creds.StoredKey, clientFirst, serverFirst, clientFinal)
	if err != nil {
		t.Fatal(err)
	}
	// A tampered proof yields no key.
	bad := clientFinal[:len(clientFinal)-4] + "AAA="
	if _, err := ClientKeyFrom(creds.StoredKey, clientFirst, serverFirst, bad); err == nil {
		t.Fatal("a tampered proof gave a client key")
	}

	other, _ := ParseVerifier(verifierFor(t, "crayon"))
	for _, tc := range []struct {
		name   string
		server scram.StoredCredentials
		key    []byte
		ok     bool
	}{
		{"same verifier", creds, key, true},
		{"another password's verifier", other, key, false},
		{"wrong key", creds, make([]byte, 32), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srvConn, cliConn := net.Pipe()
			defer srvConn.Close()
			defer cliConn.Close()
			valid := make(chan bool, 1)
			go func() { valid <- playSCRAMServer(srvConn, tc.server) }()
			fe := pgproto3.NewFrontend(cliConn, cliConn)
			err := AuthenticateWithClientKey(fe, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{mechSCRAMPlus, mechSCRAM}}, tc.key, creds.ServerKey)
			if got := <-valid; got != tc.ok || (err == nil) != tc.ok {
				t.Fatalf("server accepted %v, client err %v; want ok=%v", got, err, tc.ok)
			}
		})
	}
}

// playSCRAMServer answers a SCRAM-SHA-256 exchange as a compute would and
// reports whether the client proved the verifier; it then closes conn.
func playSCRAMServer(conn net.Conn, creds scram.StoredCredentials) bool {
	defer conn.Close()
	be := pgproto3.NewBackend(conn, conn)
	srv, _ := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	conv := srv.NewConversation()
	_ = be.SetAuthType(pgproto3.AuthTypeSASL)
	msg, err := be.Receive()
	init, ok := msg.(*pgproto3.SASLInitialResponse)
	if err != nil || !ok || init.AuthMechanism != mechSCRAM || !strings.HasPrefix(string(init.Data), "n,,") {
		return false
	}
	first, err := conv.Step(string(init.Data))
	if err != nil {
		return false
	}
	be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(first)})
	if be.Flush() != nil || be.SetAuthType(pgproto3.AuthTypeSASLContinue) != nil {
		return false
	}
	msg, err = be.Receive()
	resp, ok := msg.(*pgproto3.SASLResponse)
	if err != nil || !ok {
		return false
	}
	final, err := conv.Step(string(resp.Data))
	if err != nil || !conv.Valid() {
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"})
		_ = be.Flush()
		return false
	}
	be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte(final)})
	return be.Flush() == nil
}

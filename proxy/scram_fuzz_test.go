package proxy

import (
	"bytes"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

// rw is a client's bytes in, the server's answers discarded.
type rw struct {
	io.Reader
	io.Writer
}

// FuzzSCRAMExchange: whatever a client sends as its SCRAM messages (any
// mechanism name, client-first and client-final data, over TLS or not),
// the exchange ends without panicking, and never accepts a client that
// does not know the password (the seeds are real conversations with a
// wrong one).
func FuzzSCRAMExchange(f *testing.F) {
	creds, err := ParseVerifier(verifierFor(f, "pencil"))
	if err != nil {
		f.Fatal(err)
	}
	client, _ := scram.SHA256.NewClient("", "crayon", "")
	conv := client.NewConversation()
	first, _ := conv.Step("")
	f.Add(mechSCRAM, []byte(first), []byte("c=biws,r=abc,p=AAAA"), false)
	f.Add(mechSCRAMPlus, []byte("p=tls-server-end-point,,n=,r=x"), []byte("c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=x,p=AAAA"), true)
	f.Add("SCRAM-SHA-1", []byte("n,,n=,r=x"), []byte(""), false)
	cb := scram.ChannelBinding{Type: scram.ChannelBindingTLSServerEndpoint, Data: bytes.Repeat([]byte{7}, 32)}
	f.Fuzz(func(t *testing.T, mech string, clientFirst, clientFinal []byte, plus bool) {
		var in []byte
		in, _ = (&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: clientFirst}).Encode(in)
		in, _ = (&pgproto3.SASLResponse{Data: clientFinal}).Encode(in)
		conn := rw{bytes.NewReader(in), io.Discard}
		be := pgproto3.NewBackend(conn, conn)
		_, err := scramExchange(be, "alice", func() (scram.StoredCredentials, error) { return creds, nil }, cb, plus)
		if err == nil {
			t.Fatalf("a client without the password was accepted (mechanism %q)", mech)
		}
	})
}

package proxy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// SCRAM passthrough: a proxy that verified a client's SCRAM-SHA-256 proof
// can authenticate to a compute holding the same verifier as that client,
// without the password, the way Neon's proxy does. The client's proof
// reveals ClientKey (ClientProof XOR HMAC(StoredKey, AuthMessage)); with
// it the proxy computes a valid proof for its own exchange with the
// compute. Only a client that knows the password yields a ClientKey whose
// hash is the StoredKey, so nothing here weakens SCRAM: the key is held in
// memory for the client's session only. xdg-go/scram has no notion of
// this, hence the arithmetic below (RFC 5802 section 3).

const gs2NoBinding = "biws" // base64("n,,"): no channel binding to the compute

// scramAttrs parses "a=v,b=w" SCRAM attributes.
func scramAttrs(msg string) map[string]string {
	out := map[string]string{}
	for _, part := range strings.Split(msg, ",") {
		if k, v, ok := strings.Cut(part, "="); ok && len(k) == 1 {
			if _, dup := out[k]; !dup {
				out[k] = v
			}
		}
	}
	return out
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// clientFirstBare strips the GS2 header ("n,,", "y,,", "p=...,,") off a
// client-first message.
func clientFirstBare(clientFirst string) (string, error) {
	i := strings.Index(clientFirst, ",")
	if i < 0 {
		return "", errors.New("scram: client-first without a GS2 header")
	}
	j := strings.Index(clientFirst[i+1:], ",")
	if j < 0 {
		return "", errors.New("scram: client-first without a GS2 header")
	}
	return clientFirst[i+1+j+1:], nil
}

// ClientKeyFrom derives the client's ClientKey from the three messages of
// a SCRAM-SHA-256 exchange the server side accepted, and checks it against
// storedKey.
func ClientKeyFrom(storedKey []byte, clientFirst, serverFirst, clientFinal string) ([]byte, error) {
	bare, err := clientFirstBare(clientFirst)
	if err != nil {
		return nil, err
	}
	i := strings.LastIndex(clientFinal, ",p=")
	if i < 0 {
		return nil, errors.New("scram: client-final without a proof")
	}
	proof, err := base64.StdEncoding.DecodeString(clientFinal[i+3:])
	if err != nil || len(proof) != sha256.Size {
		return nil, errors.New("scram: malformed client proof")
	}
	sig := hmacSHA256(storedKey, bare+","+serverFirst+","+clientFinal[:i])
	key := make([]byte, sha256.Size)
	subtle.XORBytes(key, proof, sig)
	if sum := sha256.Sum256(key); subtle.ConstantTimeCompare(sum[:], storedKey) != 1 {
		return nil, errors.New("scram: the proof does not match the stored key")
	}
	return key, nil
}

// AuthenticateWithClientKey answers a server's AuthenticationSASL on fe with
// SCRAM-SHA-256 using clientKey instead of a password, and checks the
// server's signature with serverKey (both from the same verifier). It
// returns after the server's AuthenticationSASLFinal; AuthenticationOk and
// the rest of the start-up follow on fe as usual.
func AuthenticateWithClientKey(fe *pgproto3.Frontend, sasl *pgproto3.AuthenticationSASL, clientKey, serverKey []byte) error {
	offered := false
	for _, m := range sasl.AuthMechanisms {
		offered = offered || m == mechSCRAM
	}
	if !offered {
		return fmt.Errorf("scram passthrough: the server offers %v, not %s", sasl.AuthMechanisms, mechSCRAM)
	}
	var nonce [18]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return err
	}
	// PostgreSQL takes the user from the startup message; n= stays empty.
	bare := "n=,r=" + base64.StdEncoding.EncodeToString(nonce[:])
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: mechSCRAM, Data: []byte("n,," + bare)})
	if err := fe.Flush(); err != nil {
		return err
	}
	msg, err := fe.Receive()
	if err != nil {
		return fmt.Errorf("scram passthrough: %w", err)
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		return unexpectedAuth(msg)
	}
	serverFirst := string(cont.Data)
	attrs := scramAttrs(serverFirst)
	if !strings.HasPrefix(attrs["r"], bare[len("n=,r="):]) || len(attrs["r"]) <= len(bare)-len("n=,r=") {
		return errors.New("scram passthrough: the server's nonce does not extend ours")
	}
	withoutProof := "c=" + gs2NoBinding + ",r=" + attrs["r"]
	authMessage := bare + "," + serverFirst + "," + withoutProof
	storedKey := sha256.Sum256(clientKey)
	proof := make([]byte, sha256.Size)
	subtle.XORBytes(proof, clientKey, hmacSHA256(storedKey[:], authMessage))
	fe.Send(&pgproto3.SASLResponse{Data: []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof))})
	if err := fe.Flush(); err != nil {
		return err
	}
	if msg, err = fe.Receive(); err != nil {
		return fmt.Errorf("scram passthrough: %w", err)
	}
	final, ok := msg.(*pgproto3.AuthenticationSASLFinal)
	if !ok {
		return unexpectedAuth(msg)
	}
	got, err := base64.StdEncoding.DecodeString(scramAttrs(string(final.Data))["v"])
	if err != nil || !hmac.Equal(got, hmacSHA256(serverKey, authMessage)) {
		return errors.New("scram passthrough: the server's signature does not match its verifier")
	}
	return nil
}

func unexpectedAuth(msg pgproto3.BackendMessage) error {
	if e, ok := msg.(*pgproto3.ErrorResponse); ok {
		return fmt.Errorf("scram passthrough: %s (SQLSTATE %s)", e.Message, e.Code)
	}
	return fmt.Errorf("scram passthrough: unexpected %T", msg)
}

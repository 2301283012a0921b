package main

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	idleOpenLimit = 30 * time.Second // one idle client's dial + startup + auth
	maxMessage    = 1 << 20
)

// The idle-client measure needs thousands of authenticated connections that
// then do nothing. A full driver (pgconn) would spend ~3 ms of CPU per
// connection on PBKDF2 and keep buffers per connection in the bench; this
// minimal client speaks just the startup and SCRAM-SHA-256 exchange over a
// plain net.Conn and derives the salted password once per (salt, iteration
// count). What the server under test does per connection is unchanged.

// saltCache remembers PBKDF2(password, salt, i) per salt and iteration count.
type saltCache struct {
	password string
	mu       sync.Mutex
	m        map[string][]byte
}

func newSaltCache(password string) *saltCache {
	return &saltCache{password: password, m: map[string][]byte{}}
}

func (c *saltCache) salted(salt []byte, iter int) ([]byte, error) {
	key := string(salt) + "/" + strconv.Itoa(iter)
	c.mu.Lock()
	defer c.mu.Unlock()
	if k, ok := c.m[key]; ok {
		return k, nil
	}
	k, err := pbkdf2.Key(sha256.New, c.password, salt, iter, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("pbkdf2: %w", err)
	}
	c.m[key] = k
	return k, nil
}

// openIdle dials addr, logs in as user to database and returns the
// connection once the server said ReadyForQuery. Supported: trust,
// cleartext and SCRAM-SHA-256 (no channel binding: plaintext TCP).
func openIdle(ctx context.Context, addr, user, database string, cache *saltCache) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, idleOpenLimit)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if err := login(c, user, database, cache); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func login(c net.Conn, user, database string, cache *saltCache) error {
	var sp []byte
	sp = binary.BigEndian.AppendUint32(sp, 0)
	sp = binary.BigEndian.AppendUint32(sp, 196608) // protocol 3.0
	for _, s := range []string{"user", user, "database", database, ""} {
		sp = append(append(sp, s...), 0)
	}
	binary.BigEndian.PutUint32(sp, uint32(len(sp)))
	if _, err := c.Write(sp); err != nil {
		return fmt.Errorf("send startup: %w", err)
	}
	r := bufio.NewReaderSize(c, 512)
	var sc *scramClient
	for {
		typ, body, err := readMessage(r)
		if err != nil {
			return err
		}
		switch typ {
		case 'E':
			return serverError(body)
		case 'Z':
			return nil
		case 'R':
			if len(body) < 4 {
				return errors.New("short authentication message")
			}
			code, data := binary.BigEndian.Uint32(body), body[4:]
			var reply []byte
			switch code {
			case 0: // AuthenticationOk
			case 3: // cleartext password
				reply = append([]byte(cache.password), 0)
			case 10: // SASL: mechanism list
				if !strings.Contains(string(data), "SCRAM-SHA-256\x00") {
					return fmt.Errorf("server offers SASL mechanisms %q, want SCRAM-SHA-256", data)
				}
				sc = newSCRAMClient(cache)
				first := sc.clientFirst()
				reply = append([]byte("SCRAM-SHA-256\x00"), 0, 0, 0, 0)
				binary.BigEndian.PutUint32(reply[len(reply)-4:], uint32(len(first)))
				reply = append(reply, first...)
			case 11: // SASLContinue
				if sc == nil {
					return errors.New("SASLContinue before SASL")
				}
				if reply, err = sc.clientFinal(string(data)); err != nil {
					return err
				}
			case 12: // SASLFinal
				if sc == nil {
					return errors.New("SASLFinal before SASL")
				}
				if err := sc.verifyServer(string(data)); err != nil {
					return err
				}
			default:
				return fmt.Errorf("unsupported authentication request %d", code)
			}
			if reply != nil {
				if err := writeMessage(c, 'p', reply); err != nil {
					return err
				}
			}
		default: // ParameterStatus, BackendKeyData, NoticeResponse
		}
	}
}

func readMessage(r *bufio.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("read message: %w", err)
	}
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 0 || n > maxMessage {
		return 0, nil, fmt.Errorf("message %q of length %d", hdr[0], n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, fmt.Errorf("read message %q: %w", hdr[0], err)
	}
	return hdr[0], body, nil
}

func writeMessage(w io.Writer, typ byte, body []byte) error {
	msg := append([]byte{typ, 0, 0, 0, 0}, body...)
	binary.BigEndian.PutUint32(msg[1:], uint32(len(body)+4))
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("send %q: %w", typ, err)
	}
	return nil
}

// wireError is an ErrorResponse: its SQLSTATE and message (the soak
// section checks the code of a refusal).
type wireError struct{ code, msg string }

func (e *wireError) Error() string { return fmt.Sprintf("server error %s: %s", e.code, e.msg) }

// serverError renders an ErrorResponse as "SQLSTATE: message".
func serverError(body []byte) error {
	var e wireError
	for _, f := range strings.Split(string(body), "\x00") {
		if f == "" {
			continue
		}
		switch f[0] {
		case 'C':
			e.code = f[1:]
		case 'M':
			e.msg = f[1:]
		}
	}
	return &e
}

// scramClient is the client side of one SCRAM-SHA-256 exchange (RFC 5802 /
// 7677) without channel binding, as libpq sends it (empty user name: the
// server uses the startup packet's).
type scramClient struct {
	cache       *saltCache
	clientNonce string
	firstBare   string
	authMessage string
	salted      []byte
}

func newSCRAMClient(cache *saltCache) *scramClient {
	var b [18]byte
	_, _ = rand.Read(b[:])
	return &scramClient{cache: cache, clientNonce: base64.StdEncoding.EncodeToString(b[:])}
}

func (s *scramClient) clientFirst() string {
	s.firstBare = "n=,r=" + s.clientNonce
	return "n,," + s.firstBare
}

// clientFinal answers the server-first-message with the proof.
func (s *scramClient) clientFinal(serverFirst string) ([]byte, error) {
	var nonce, salt64, iter string
	for _, attr := range strings.Split(serverFirst, ",") {
		k, v, _ := strings.Cut(attr, "=")
		switch k {
		case "r":
			nonce = v
		case "s":
			salt64 = v
		case "i":
			iter = v
		}
	}
	if !strings.HasPrefix(nonce, s.clientNonce) || len(nonce) == len(s.clientNonce) {
		return nil, fmt.Errorf("SCRAM: bad server nonce in %q", serverFirst)
	}
	salt, err := base64.StdEncoding.DecodeString(salt64)
	if err != nil {
		return nil, fmt.Errorf("SCRAM: salt: %w", err)
	}
	i, err := strconv.Atoi(iter)
	if err != nil || i < 1 {
		return nil, fmt.Errorf("SCRAM: iteration count %q", iter)
	}
	if s.salted, err = s.cache.salted(salt, i); err != nil {
		return nil, err
	}
	withoutProof := "c=biws,r=" + nonce
	s.authMessage = s.firstBare + "," + serverFirst + "," + withoutProof
	clientKey := hmacSHA256(s.salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	sig := hmacSHA256(storedKey[:], s.authMessage)
	for j := range sig {
		sig[j] ^= clientKey[j]
	}
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(sig)), nil
}

// verifyServer checks the server-final-message's signature.
func (s *scramClient) verifyServer(serverFinal string) error {
	v, ok := strings.CutPrefix(serverFinal, "v=")
	if !ok {
		return fmt.Errorf("SCRAM: server final %q", serverFinal)
	}
	want := hmacSHA256(hmacSHA256(s.salted, "Server Key"), s.authMessage)
	got, err := base64.StdEncoding.DecodeString(v)
	if err != nil || !hmac.Equal(got, want) {
		return errors.New("SCRAM: wrong server signature")
	}
	return nil
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// idleResult is one path's idle-client measure.
type idleResult struct {
	name           string
	requested      int
	reached        int
	openTime       time.Duration
	rssBefore      int64 // bytes
	rssOpen        int64
	rssAfterClose  int64
	backendsBefore int // client backends on the compute before opening; -1 unknown
	backends       int // client backends on the compute while the clients were open; -1 unknown
	firstError     string
	failedAttempts int
}

// perClientKiB is the RSS growth per open client in KiB.
func (r idleResult) perClientKiB() float64 {
	if r.reached == 0 {
		return 0
	}
	return float64(r.rssOpen-r.rssBefore) / 1024 / float64(r.reached)
}

// openIdleClients opens up to n connections with workers goroutines. It
// stops at the first failure (a limit was reached) and returns what it got.
func openIdleClients(ctx context.Context, n, workers int, addr, user, database string, cache *saltCache) ([]net.Conn, int, error) {
	conns := make([]net.Conn, n)
	var next, failed atomic.Int64
	var stop atomic.Bool
	var once sync.Once
	var firstErr error
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for !stop.Load() && ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := openIdle(ctx, addr, user, database, cache)
				if err != nil {
					failed.Add(1)
					once.Do(func() { firstErr = fmt.Errorf("client %d: %w", i+1, err) })
					stop.Store(true)
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	var out []net.Conn
	for _, c := range conns {
		if c != nil {
			out = append(out, c)
		}
	}
	if firstErr == nil && ctx.Err() != nil {
		firstErr = context.Cause(ctx)
	}
	return out, int(failed.Load()), firstErr
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		// Terminate, then close: a polite goodbye, as a driver would send.
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_ = writeMessage(c, 'X', nil)
		c.Close()
	}
}

// rss reads VmRSS of pid from /proc, in bytes.
func rss(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read VmRSS: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("pid %d: VmRSS line %q", pid, line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: VmRSS %q: %w", pid, f[0], err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS in /proc/%d/status", pid, pid)
}

// userHZ is the unit of utime and stime in /proc/PID/stat (USER_HZ, 100
// on every Linux architecture Go supports).
const userHZ = 100

// cpuTime reads the CPU time (user + system) pid has used, from
// /proc/PID/stat; the resolution is 1/userHZ.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read CPU time: %w", err)
	}
	// The command name (field 2) can hold spaces: fields count from the
	// last ')'. utime and stime are fields 14 and 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("pid %d: malformed /proc/%d/stat", pid, pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("pid %d: short /proc/%d/stat", pid, pid)
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("pid %d: CPU ticks %q: %w", pid, s, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// Package httpapi is the plumbing the standalone services' HTTP APIs share
// (`neonproxy walkeeper`, `neonproxy pagestore`): bearer-token checks,
// JSON errors that map back to sentinel errors on the client, and a
// client with a per-call timeout. Both speak HTTP/1.1 and, without TLS,
// HTTP/2 (h2c), so a bulk stream and short calls share one connection.
package httpapi

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// CallTimeout bounds every short call (Client.Call); streams are bounded
// by their caller's context.
const CallTimeout = 5 * time.Second

// Protocols is what servers and clients speak: HTTP/1.1 and unencrypted
// HTTP/2.
func Protocols() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return p
}

// Server returns an http.Server for h on both protocols.
func Server(h http.Handler) *http.Server {
	return &http.Server{Handler: h, Protocols: Protocols(), ReadHeaderTimeout: 10 * time.Second}
}

// RequireToken wraps h so that every request but GET /healthz carries
// "Authorization: Bearer <token>" (401 otherwise). An empty token
// returns h. what names the config key in the error.
func RequireToken(h http.Handler, token, what string) http.Handler {
	if token == "" {
		return h
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			WriteError(w, http.StatusUnauthorized, fmt.Errorf("missing or wrong token (%s)", what))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// IsLoopback says whether listen (host:port) binds only a loopback
// address: what may serve an API without a token.
func IsLoopback(listen string) (bool, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false, err
	}
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback()), nil
}

// Healthz answers GET /healthz.
func Healthz(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") }

// WriteJSON writes v as the JSON response.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError writes {"error": err} with code.
func WriteError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// BadRequest marks an error as the caller's (400).
type BadRequest struct{ Err error }

func (b BadRequest) Error() string { return b.Err.Error() }
func (b BadRequest) Unwrap() error { return b.Err }

// Bad marks err as the caller's.
func Bad(err error) error { return BadRequest{Err: err} }

// StatusOf is the status for err: 400 for BadRequest, the first match in
// codes (sentinel → status), else 500.
func StatusOf(err error, codes map[error]int) int {
	var bad BadRequest
	if errors.As(err, &bad) {
		return http.StatusBadRequest
	}
	for e, code := range codes {
		if errors.Is(err, e) {
			return code
		}
	}
	return http.StatusInternalServerError
}

// Client calls one service's API.
type Client struct {
	Base  string // http://host:port
	Name  string // "walkeeper", "pagestore": prefixes errors
	Token string
	HC    *http.Client
	// Sentinels maps a response status to the error it stands for, so
	// errors.Is works across the network.
	Sentinels map[int]error
}

// NewClient parses addr ("host:port" or an http:// URL).
func NewClient(name, addr string, sentinels map[int]error) (*Client, error) {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || u.Scheme != "http" {
		return nil, fmt.Errorf("%s: address %q: want host:port", name, addr)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Protocols = Protocols()
	return &Client{Base: strings.TrimRight(u.String(), "/"), Name: name, HC: &http.Client{Transport: tr}, Sentinels: sentinels}, nil
}

// Do sends req and returns the response when its status is 2xx;
// otherwise the service's error, mapped through Sentinels.
func (c *Client) Do(req *http.Request) (*http.Response, error) {
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HC.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", c.Name, c.Base, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, c.ErrorOf(resp)
}

// ErrorOf decodes a non-2xx response's error.
func (c *Client) ErrorOf(resp *http.Response) error {
	var e struct {
		Error string `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(b))
	}
	if s, ok := c.Sentinels[resp.StatusCode]; ok {
		return fmt.Errorf("%w (%s %s: %s)", s, c.Name, c.Base, e.Error)
	}
	return fmt.Errorf("%s %s: %s: %s", c.Name, c.Base, resp.Status, e.Error)
}

// Call runs a short request with CallTimeout: in (if not nil) is sent as
// JSON, the response decoded into out (if not nil).
func (c *Client) Call(ctx context.Context, method, path string, q url.Values, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.URL(path, q), body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", c.Name, c.Base, err)
		}
	}
	return nil
}

// URL is Base + path + query.
func (c *Client) URL(path string, q url.Values) string {
	u := c.Base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

package walkeeper

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// requestTimeout bounds every call but Follow's stream and the bodies of
// Export and Import, which last as long as the data takes.
const requestTimeout = 5 * time.Second

// Client reaches a standalone keeper's HTTP API (see Handler).
type Client struct {
	base  string
	hc    *http.Client
	token string
}

// WithToken makes the client send the keeper's shared secret
// (walkeeper.token) with every request.
func (c *Client) WithToken(token string) *Client {
	c.token = token
	return c
}

// NewClient returns a client for the keeper at addr ("host:port" or an
// http:// URL).
func NewClient(addr string) (*Client, error) {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("walkeeper: keeper address %q: want host:port", addr)
	}
	return &Client{base: strings.TrimRight(u.String(), "/"), hc: &http.Client{}}, nil
}

// String is the keeper's base URL.
func (c *Client) String() string { return c.base }

func (c *Client) nsURL(ns uint64, suffix string, q url.Values) string {
	u := c.base + "/v1/wal/" + strconv.FormatUint(ns, 10) + suffix
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// do sends a request and returns the response when its status is 2xx;
// otherwise the keeper's error, mapped back to ErrNoWAL / ErrFenced.
func (c *Client) do(req *http.Request) (*http.Response, error) {
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("walkeeper %s: %w", c.base, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	var e struct {
		Error string `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(b))
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		return nil, fmt.Errorf("%w (keeper %s: %s)", ErrNoWAL, c.base, e.Error)
	case http.StatusConflict:
		return nil, fmt.Errorf("%w (keeper %s: %s)", ErrFenced, c.base, e.Error)
	}
	return nil, fmt.Errorf("walkeeper %s: %s: %s", c.base, resp.Status, e.Error)
}

// call runs a short request with requestTimeout and discards the body.
func (c *Client) call(ctx context.Context, method, u string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return fmt.Errorf("walkeeper %s: decode: %w", c.base, err)
		}
	}
	return nil
}

func lsnQuery(name string, lsn LSN) url.Values {
	return url.Values{name: {strconv.FormatUint(lsn, 10)}}
}

// Info implements Service.
func (c *Client) Info(ctx context.Context, ns uint64) (Info, error) {
	var in Info
	err := c.call(ctx, http.MethodGet, c.nsURL(ns, "", nil), &in)
	return in, err
}

// SetCovered implements Service.
func (c *Client) SetCovered(ctx context.Context, ns uint64, lsn LSN) error {
	return c.call(ctx, http.MethodPut, c.nsURL(ns, "/covered", lsnQuery("lsn", lsn)), nil)
}

// Trim implements Service.
func (c *Client) Trim(ctx context.Context, ns uint64, before LSN) error {
	return c.call(ctx, http.MethodPost, c.nsURL(ns, "/trim", lsnQuery("before", before)), nil)
}

// Drop implements Service.
func (c *Client) Drop(ctx context.Context, ns uint64) error {
	return c.call(ctx, http.MethodDelete, c.nsURL(ns, "", nil), nil)
}

// Export implements Service. The body streams from the keeper.
func (c *Client) Export(ctx context.Context, ns uint64, from, to LSN) (*WAL, error) {
	q := lsnQuery("from", from)
	if to != 0 {
		q.Set("to", strconv.FormatUint(to, 10))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.nsURL(ns, "/pages", q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	w := &WAL{Body: resp.Body}
	w.Start, err = strconv.ParseUint(resp.Header.Get(hdrStart), 10, 64)
	if err == nil {
		w.Flush, err = strconv.ParseUint(resp.Header.Get(hdrFlush), 10, 64)
	}
	if err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("walkeeper %s: export %d: bad range headers: %w", c.base, ns, err)
	}
	return w, nil
}

// Import implements Service.
func (c *Client) Import(ctx context.Context, ns uint64, w *WAL) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.nsURL(ns, "/pages", nil), w.Body)
	if err != nil {
		w.Body.Close()
		return err
	}
	// From here the transport owns the body and closes it.
	req.ContentLength = w.Len()
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set(hdrStart, strconv.FormatUint(w.Start, 10))
	req.Header.Set(hdrFlush, strconv.FormatUint(w.Flush, 10))
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Follow implements Service: the stream lives as long as one HTTP request,
// whose response reports progress (see Handler).
func (c *Client) Follow(ctx context.Context, fr FollowRequest) (Follower, error) {
	body, err := json.Marshal(fr)
	if err != nil {
		return nil, err
	}
	// The request lives as long as the stream, not as ctx (which bounds
	// only the start).
	sctx, cancel := context.WithCancel(context.Background())
	stopOnCtx := context.AfterFunc(ctx, cancel)
	defer stopOnCtx()
	req, err := http.NewRequestWithContext(sctx, http.MethodPost, c.nsURL(fr.NS, "/follow", nil), strings.NewReader(string(body)))
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	f := &remoteFollower{cancel: cancel, done: make(chan struct{}), body: resp.Body, base: c.base}
	sc := bufio.NewScanner(resp.Body)
	// The first status line says the stream runs.
	if err := f.next(sc); err != nil {
		cancel()
		resp.Body.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("walkeeper %s: follow: %w", c.base, ctx.Err())
		}
		return nil, err
	}
	if f.ended {
		cancel()
		resp.Body.Close()
		return nil, fmt.Errorf("walkeeper %s: the stream ended at once: %w", c.base, f.err)
	}
	go f.run(sc)
	return f, nil
}

// remoteFollower is a Follower over a follow request.
type remoteFollower struct {
	cancel context.CancelFunc
	done   chan struct{}
	body   io.ReadCloser
	base   string
	flush  atomic.Uint64
	lag    atomic.Uint64
	// stopped: Stop ended the stream (a normal end).
	stopped atomic.Bool
	// Owned by the reader goroutine; err is read only after done closes.
	ended bool
	err   error
}

// next reads one status line.
func (f *remoteFollower) next(sc *bufio.Scanner) error {
	if !sc.Scan() {
		err := sc.Err()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("walkeeper %s: follow: %w", f.base, err)
	}
	var st followStatus
	if err := json.Unmarshal(sc.Bytes(), &st); err != nil {
		return fmt.Errorf("walkeeper %s: follow status: %w", f.base, err)
	}
	f.flush.Store(st.Flush)
	f.lag.Store(st.Lag)
	if st.Done {
		f.ended = true
		if st.Error != "" {
			f.err = errors.New(st.Error)
		}
	}
	return nil
}

func (f *remoteFollower) run(sc *bufio.Scanner) {
	var err error
	for !f.ended {
		if err = f.next(sc); err != nil {
			break
		}
	}
	if err == nil {
		err = f.err
	}
	if f.stopped.Load() {
		err = nil
	}
	f.cancel()
	f.body.Close()
	f.err = err
	close(f.done)
}

func (f *remoteFollower) Done() <-chan struct{} { return f.done }

func (f *remoteFollower) Err() error {
	select {
	case <-f.done:
		return f.err
	default:
		return nil
	}
}

func (f *remoteFollower) LagBytes() uint64 { return f.lag.Load() }
func (f *remoteFollower) FlushLSN() LSN    { return f.flush.Load() }

func (f *remoteFollower) Stop() {
	f.stopped.Store(true)
	f.cancel()
	<-f.done
}

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

	"github.com/neonproxy/neonproxy/internal/httpapi"
)

// Client reaches a standalone keeper's HTTP API (see Handler).
type Client struct{ api *httpapi.Client }

// WithToken makes the client send the keeper's shared secret
// (walkeeper.token) with every request.
func (c *Client) WithToken(token string) *Client {
	c.api.Token = token
	return c
}

// NewClient returns a client for the keeper at addr ("host:port" or an
// http:// URL).
func NewClient(addr string) (*Client, error) {
	api, err := httpapi.NewClient("walkeeper", addr, map[int]error{http.StatusNotFound: ErrNoWAL, http.StatusConflict: ErrFenced})
	if err != nil {
		return nil, err
	}
	return &Client{api: api}, nil
}

// String is the keeper's base URL.
func (c *Client) String() string { return c.api.Base }

func nsPath(ns uint64, suffix string) string {
	return "/v1/wal/" + strconv.FormatUint(ns, 10) + suffix
}

func lsnQuery(name string, lsn LSN) url.Values {
	return url.Values{name: {strconv.FormatUint(lsn, 10)}}
}

// Info implements Service.
func (c *Client) Info(ctx context.Context, ns uint64) (Info, error) {
	var in Info
	err := c.api.Call(ctx, http.MethodGet, nsPath(ns, ""), nil, nil, &in)
	return in, err
}

// SetCovered implements Service.
func (c *Client) SetCovered(ctx context.Context, ns uint64, lsn LSN) error {
	return c.api.Call(ctx, http.MethodPut, nsPath(ns, "/covered"), lsnQuery("lsn", lsn), nil, nil)
}

// Trim implements Service.
func (c *Client) Trim(ctx context.Context, ns uint64, before LSN) error {
	return c.api.Call(ctx, http.MethodPost, nsPath(ns, "/trim"), lsnQuery("before", before), nil, nil)
}

// Drop implements Service.
func (c *Client) Drop(ctx context.Context, ns uint64) error {
	return c.api.Call(ctx, http.MethodDelete, nsPath(ns, ""), nil, nil, nil)
}

// Export implements Service. The body streams from the keeper.
func (c *Client) Export(ctx context.Context, ns uint64, from, to LSN) (*WAL, error) {
	q := lsnQuery("from", from)
	if to != 0 {
		q.Set("to", strconv.FormatUint(to, 10))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.api.URL(nsPath(ns, "/pages"), q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.api.Do(req)
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
		return nil, fmt.Errorf("walkeeper %s: export %d: bad range headers: %w", c.api.Base, ns, err)
	}
	return w, nil
}

// Import implements Service.
func (c *Client) Import(ctx context.Context, ns uint64, w *WAL) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.api.URL(nsPath(ns, "/pages"), nil), w.Body)
	if err != nil {
		w.Body.Close()
		return err
	}
	// From here the transport owns the body and closes it.
	req.ContentLength = w.Len()
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set(hdrStart, strconv.FormatUint(w.Start, 10))
	req.Header.Set(hdrFlush, strconv.FormatUint(w.Flush, 10))
	resp, err := c.api.Do(req)
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
	req, err := http.NewRequestWithContext(sctx, http.MethodPost, c.api.URL(nsPath(fr.NS, "/follow"), nil), strings.NewReader(string(body)))
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.api.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	f := &remoteFollower{cancel: cancel, done: make(chan struct{}), body: resp.Body, base: c.api.Base}
	sc := bufio.NewScanner(resp.Body)
	// The first status line says the stream runs.
	if err := f.next(sc); err != nil {
		cancel()
		resp.Body.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("walkeeper %s: follow: %w", c.api.Base, ctx.Err())
		}
		return nil, err
	}
	if f.ended {
		cancel()
		resp.Body.Close()
		return nil, fmt.Errorf("walkeeper %s: the stream ended at once: %w", c.api.Base, f.err)
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

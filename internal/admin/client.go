package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client calls the admin API; the CLI's branch and compute commands use it.
type Client struct {
	// BaseURL is the admin API's address: "http://127.0.0.1:8432", or a
	// bare host:port (admin_listen), which means http://host:port.
	BaseURL string
	// HTTP is the client to use; nil means http.DefaultClient.
	HTTP *http.Client
	// Token is admin.token, sent as a bearer token ("": none).
	Token string
}

// CreateBranch creates branch name from parent's current state (parent ""
// means the server's default branch).
func (c *Client) CreateBranch(ctx context.Context, name, parent string) (BranchJSON, error) {
	return c.Create(ctx, CreateBranchRequest{Name: name, Parent: parent})
}

// Create sends a full create request (including lsn or at).
func (c *Client) Create(ctx context.Context, req CreateBranchRequest) (BranchJSON, error) {
	var out BranchJSON
	err := c.do(ctx, http.MethodPost, "/v1/branches", req, http.StatusCreated, &out)
	return out, err
}

// ListBranches returns all branches.
func (c *Client) ListBranches(ctx context.Context) ([]BranchJSON, error) {
	var out []BranchJSON
	err := c.do(ctx, http.MethodGet, "/v1/branches", nil, http.StatusOK, &out)
	return out, err
}

// GetBranch returns one branch.
func (c *Client) GetBranch(ctx context.Context, name string) (BranchJSON, error) {
	var out BranchJSON
	err := c.do(ctx, http.MethodGet, "/v1/branches/"+url.PathEscape(name), nil, http.StatusOK, &out)
	return out, err
}

// DeleteBranch deletes a branch and its compute's data.
func (c *Client) DeleteBranch(ctx context.Context, name string) error {
	return c.DeleteBranchTree(ctx, name, false)
}

// DeleteBranchTree deletes a branch; with cascade, its descendants first.
func (c *Client) DeleteBranchTree(ctx context.Context, name string, cascade bool) error {
	path := "/v1/branches/" + url.PathEscape(name)
	if cascade {
		path += "?cascade=true"
	}
	return c.do(ctx, http.MethodDelete, path, nil, http.StatusNoContent, nil)
}

// Suspend stops the branch's compute and returns the branch.
func (c *Client) Suspend(ctx context.Context, name string) (BranchJSON, error) {
	var out BranchJSON
	err := c.do(ctx, http.MethodPost, "/v1/branches/"+url.PathEscape(name)+"/suspend", nil, http.StatusOK, &out)
	return out, err
}

// SetPrewarm switches predictive pre-warm for a branch (this node).
func (c *Client) SetPrewarm(ctx context.Context, name string, enabled bool) (BranchJSON, error) {
	var out BranchJSON
	err := c.do(ctx, http.MethodPost, "/v1/branches/"+url.PathEscape(name)+"/prewarm", PrewarmRequest{Enabled: enabled}, http.StatusOK, &out)
	return out, err
}

// UpdateBranch changes a branch's settings (nil fields are kept).
func (c *Client) UpdateBranch(ctx context.Context, name string, set BranchSettings) (BranchJSON, error) {
	var out BranchJSON
	err := c.do(ctx, http.MethodPatch, "/v1/branches/"+url.PathEscape(name), set, http.StatusOK, &out)
	return out, err
}

// ResetBranch makes a branch read its parent's latest durable state again.
// Its clients are disconnected, or with wait the call waits (up to
// timeout; 0: the server's default) until they have left.
func (c *Client) ResetBranch(ctx context.Context, name string, wait bool, timeout time.Duration) (BranchJSON, error) {
	q := url.Values{}
	if wait {
		q.Set("wait", "true")
	}
	if timeout > 0 {
		q.Set("timeout", timeout.String())
	}
	path := "/v1/branches/" + url.PathEscape(name) + "/reset"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out BranchJSON
	err := c.do(ctx, http.MethodPost, path, nil, http.StatusOK, &out)
	return out, err
}

// DiffOptions tune DiffBranch; the zero value compares with the parent,
// user relations only, without the schema.
type DiffOptions struct {
	Against  string // "" : the parent
	Schema   bool   // also the DDL differences (wakes both computes)
	Database string // for Schema; "": postgres
	System   bool   // also system catalogs
}

// DiffBranch reports what a branch and another one changed since the
// newest state they share.
func (c *Client) DiffBranch(ctx context.Context, name string, o DiffOptions) (DiffJSON, error) {
	q := url.Values{}
	if o.Against != "" {
		q.Set("against", o.Against)
	}
	if o.Schema {
		q.Set("schema", "true")
	}
	if o.Database != "" {
		q.Set("database", o.Database)
	}
	if o.System {
		q.Set("system", "true")
	}
	path := "/v1/branches/" + url.PathEscape(name) + "/diff"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out DiffJSON
	err := c.do(ctx, http.MethodGet, path, nil, http.StatusOK, &out)
	return out, err
}

// Usage reports every branch's usage over [from, to) (zero: the server's
// default window, this calendar month).
func (c *Client) Usage(ctx context.Context, from, to time.Time) (UsageReportJSON, error) {
	q := url.Values{}
	if !from.IsZero() {
		q.Set("from", from.UTC().Format(time.RFC3339))
	}
	if !to.IsZero() {
		q.Set("to", to.UTC().Format(time.RFC3339))
	}
	path := "/v1/usage"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out UsageReportJSON
	err := c.do(ctx, http.MethodGet, path, nil, http.StatusOK, &out)
	return out, err
}

// GC runs a pagestore garbage collection pass.
func (c *Client) GC(ctx context.Context) (GCResult, error) {
	var out GCResult
	err := c.do(ctx, http.MethodPost, "/v1/pagestore/gc", nil, http.StatusOK, &out)
	return out, err
}

func (c *Client) baseURL() string {
	base := strings.TrimRight(strings.TrimSpace(c.BaseURL), "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return base
}

// do sends the request; a response other than want becomes an *APIError.
func (c *Client) do(ctx context.Context, method, path string, body any, want int, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	u := c.baseURL() + path
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("admin API %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin API %s %s: %w (is neonproxy serving its admin API at %s? see admin_listen)", method, path, err, c.baseURL())
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin API %s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return apiError(resp.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("admin API %s %s: decode response: %w", method, path, err)
	}
	return nil
}

func apiError(status int, body []byte) *APIError {
	var e ErrorJSON
	if err := json.Unmarshal(body, &e); err == nil && e.Error != "" {
		return &APIError{Status: status, Message: e.Error}
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 512 {
		msg = msg[:512] + "…"
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &APIError{Status: status, Message: msg}
}

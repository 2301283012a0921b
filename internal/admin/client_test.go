package admin

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestClient(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	c := &Client{BaseURL: f.srv.URL + "/", HTTP: f.srv.Client()}

	tests := []struct {
		name       string
		call       func() (any, error)
		wantStatus int    // 0: success
		wantErr    string // substring of APIError.Message
		check      func(t *testing.T, v any)
	}{
		{
			name: "list",
			call: func() (any, error) { return c.ListBranches(ctx) },
			check: func(t *testing.T, v any) {
				bs := v.([]BranchJSON)
				if len(bs) != 2 || bs[0].Name != "dev" || bs[1].Name != "main" {
					t.Errorf("list = %+v", bs)
				}
			},
		},
		{
			name: "get",
			call: func() (any, error) { return c.GetBranch(ctx, "main") },
			check: func(t *testing.T, v any) {
				b := v.(BranchJSON)
				if b.Name != "main" || b.Compute.State != "running" || b.Compute.PID != 4242 || b.LogicalSizeBytes != 4096 {
					t.Errorf("get = %+v", b)
				}
			},
		},
		{name: "get unknown", call: func() (any, error) { return c.GetBranch(ctx, "nope") }, wantStatus: 404, wantErr: "branch nope does not exist"},
		{name: "get escaped name", call: func() (any, error) { return c.GetBranch(ctx, "a/b") }, wantStatus: 400, wantErr: "invalid branch name"},
		{
			name: "create",
			call: func() (any, error) { return c.CreateBranch(ctx, "feat", "dev") },
			check: func(t *testing.T, v any) {
				b := v.(BranchJSON)
				if b.Name != "feat" || b.Parent != "dev" || b.CreatedAt.IsZero() {
					t.Errorf("create = %+v", b)
				}
			},
		},
		{name: "create exists", call: func() (any, error) { return c.CreateBranch(ctx, "dev", "main") }, wantStatus: 409, wantErr: "already exists"},
		{name: "create bad parent", call: func() (any, error) { return c.CreateBranch(ctx, "y", "ghost") }, wantStatus: 404, wantErr: "parent branch ghost"},
		{name: "create at a bad time", call: func() (any, error) {
			return c.Create(ctx, CreateBranchRequest{Name: "y", At: "yesterday"})
		}, wantStatus: 400, wantErr: "RFC 3339"},
		{
			name: "suspend",
			call: func() (any, error) { return c.Suspend(ctx, "main") },
			check: func(t *testing.T, v any) {
				if b := v.(BranchJSON); b.Compute.State != "stopped" {
					t.Errorf("suspend = %+v", b)
				}
			},
		},
		{name: "suspend unknown", call: func() (any, error) { return c.Suspend(ctx, "nope") }, wantStatus: 404, wantErr: "does not exist"},
		{name: "delete parent", call: func() (any, error) { return nil, c.DeleteBranch(ctx, "dev") }, wantStatus: 409, wantErr: "parent of feat"},
		{name: "delete default", call: func() (any, error) { return nil, c.DeleteBranch(ctx, "main") }, wantStatus: 409, wantErr: "default branch"},
		{name: "delete", call: func() (any, error) { return nil, c.DeleteBranch(ctx, "feat") }},
		{name: "delete again", call: func() (any, error) { return nil, c.DeleteBranch(ctx, "feat") }, wantStatus: 404, wantErr: "does not exist"},
	}
	// The cases run in order against one server: create before delete.
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := tc.call()
			if tc.wantStatus == 0 {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if tc.check != nil {
					tc.check(t, v)
				}
				return
			}
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("err = %v (%T), want *APIError", err, err)
			}
			if ae.Status != tc.wantStatus || !strings.Contains(ae.Message, tc.wantErr) {
				t.Fatalf("APIError = %+v, want status %d and message containing %q", ae, tc.wantStatus, tc.wantErr)
			}
			if !strings.Contains(err.Error(), ae.Message) {
				t.Errorf("Error() = %q lacks the message", err.Error())
			}
		})
	}
}

func TestClientBareHostPort(t *testing.T) {
	f := newFixture(t)
	c := &Client{BaseURL: strings.TrimPrefix(f.srv.URL, "http://")}
	bs, err := c.ListBranches(context.Background())
	if err != nil || len(bs) != 2 {
		t.Fatalf("ListBranches via host:port = %+v, %v", bs, err)
	}
}

func TestClientNonJSONError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream exploded", http.StatusBadGateway)
	}))
	defer srv.Close()
	_, err := (&Client{BaseURL: srv.URL}).GetBranch(context.Background(), "main")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 502 || ae.Message != "upstream exploded" {
		t.Fatalf("err = %#v", err)
	}
}

func TestClientUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	_, err := (&Client{BaseURL: url}).ListBranches(context.Background())
	if err == nil || !strings.Contains(err.Error(), "admin_listen") {
		t.Fatalf("err = %v, want a hint about admin_listen", err)
	}
}

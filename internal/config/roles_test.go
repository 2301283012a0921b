package config

import (
	"slices"
	"strings"
	"testing"
)

func TestRoles(t *testing.T) {
	peers := []string{"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"}
	for _, tc := range []struct {
		name    string
		mutate  func(c *Config)
		want    []string // effective roles when valid
		wantErr string   // part of the error when invalid
	}{
		{"default: one machine", func(c *Config) {}, []string{"proxy", "compute", "pagestore", "walkeeper"}, ""},
		{"implied by the addresses", func(c *Config) {
			c.Pagestore.Address, c.Walkeeper.Peers, c.Walkeeper.Quorum, c.Walkeeper.Token = "10.0.0.9:7100", peers, 2, "t"
		}, []string{"proxy", "compute"}, ""},
		{"a storage node", func(c *Config) { c.Roles = []string{"pagestore", "walkeeper"} }, []string{"pagestore", "walkeeper"}, ""},
		{"compute node with standalone storage", func(c *Config) {
			c.Roles = []string{"proxy", "compute"}
			c.Pagestore.Address, c.Walkeeper.Peers, c.Walkeeper.Quorum = "10.0.0.9:7100", peers, 2
		}, []string{"proxy", "compute"}, ""},
		{"unknown role", func(c *Config) { c.Roles = []string{"proxy", "compute", "router"} }, nil, `unknown role "router"`},
		{"listed twice", func(c *Config) { c.Roles = []string{"pagestore", "pagestore"} }, nil, "listed twice"},
		{"proxy without compute", func(c *Config) { c.Roles = []string{"proxy", "pagestore", "walkeeper"} }, nil, "go together"},
		{"no pagestore anywhere", func(c *Config) { c.Roles = []string{"proxy", "compute", "walkeeper"} }, nil, "pagestore.address must name"},
		{"two pagestores", func(c *Config) {
			c.Roles = []string{"proxy", "compute", "pagestore", "walkeeper"}
			c.Pagestore.Address = "10.0.0.9:7100"
		}, nil, "names another one"},
		{"no keeper anywhere", func(c *Config) {
			c.Roles = []string{"proxy", "compute", "pagestore"}
		}, nil, "walkeeper.peers must name"},
		{"embedded keeper and peers", func(c *Config) {
			c.Roles = []string{"proxy", "compute", "pagestore", "walkeeper"}
			c.Walkeeper.Peers, c.Walkeeper.Quorum = peers, 2
		}, nil, "drop one of them"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mutate(&c)
			err := c.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Validate() = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.EffectiveRoles(); !slices.Equal(got, tc.want) {
				t.Fatalf("roles %v, want %v", got, tc.want)
			}
		})
	}
}

package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Roles a neonproxy process plays (roles:).
const (
	RoleProxy     = "proxy"     // the front door and the admin API
	RoleCompute   = "compute"   // the computes (PostgreSQL) of the branches it holds
	RolePagestore = "pagestore" // the page store
	RoleWalkeeper = "walkeeper" // a WAL keeper
)

var allRoles = []string{RoleProxy, RoleCompute, RolePagestore, RoleWalkeeper}

// EffectiveRoles is roles:, or when it is empty what the addresses imply:
// proxy and compute, plus the pagestore unless pagestore.address names a
// standalone one, plus a keeper unless walkeeper.peers name standalone
// ones (today's single machine: all four).
func (c Config) EffectiveRoles() []string {
	if len(c.Roles) > 0 {
		return c.Roles
	}
	r := []string{RoleProxy, RoleCompute}
	if c.Pagestore.Address == "" {
		r = append(r, RolePagestore)
	}
	if len(c.Walkeeper.Peers) == 0 {
		r = append(r, RoleWalkeeper)
	}
	return r
}

// HasRole says whether the process plays role.
func (c Config) HasRole(role string) bool { return slices.Contains(c.EffectiveRoles(), role) }

// validateRoles checks roles: against itself and the addresses.
func (c Config) validateRoles() []error {
	if len(c.Roles) == 0 {
		return nil
	}
	var errs []error
	seen := map[string]bool{}
	for _, r := range c.Roles {
		if !slices.Contains(allRoles, r) {
			errs = append(errs, fmt.Errorf("roles: unknown role %q (want some of %s)", r, strings.Join(allRoles, ", ")))
		}
		if seen[r] {
			errs = append(errs, fmt.Errorf("roles: %q listed twice", r))
		}
		seen[r] = true
	}
	if seen[RoleProxy] != seen[RoleCompute] {
		errs = append(errs, errors.New("roles: proxy and compute go together (a node's front door serves the computes it runs)"))
	}
	if !seen[RoleCompute] {
		return errs // a storage node: the addresses are other nodes' business
	}
	switch {
	case seen[RolePagestore] && c.Pagestore.Address != "":
		errs = append(errs, errors.New("roles: this node has the pagestore role, but pagestore.address names another one (drop one of them)"))
	case !seen[RolePagestore] && c.Pagestore.Address == "":
		errs = append(errs, errors.New("roles: without the pagestore role, pagestore.address must name the standalone pagestore"))
	}
	switch {
	case seen[RoleWalkeeper] && len(c.Walkeeper.Peers) > 0:
		errs = append(errs, errors.New("roles: this node has the walkeeper role (the embedded keeper), but walkeeper.peers names standalone ones (drop one of them)"))
	case !seen[RoleWalkeeper] && len(c.Walkeeper.Peers) == 0:
		errs = append(errs, errors.New("roles: without the walkeeper role, walkeeper.peers must name the standalone keepers"))
	}
	return errs
}

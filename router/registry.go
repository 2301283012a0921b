package router

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"
)

// Branch is one entry of the branch registry. In this release a branch's
// data is a local data directory; issue 4 turns it into a pagestore
// timeline (parent + LSN).
type Branch struct {
	Name      string    `json:"name"`
	Parent    string    `json:"parent,omitempty"`
	ParentLSN string    `json:"parent_lsn,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// AllowedIPs, when not empty, are the only client addresses (CIDRs or
	// single addresses) the front door lets reach this branch, checked
	// before authentication. See ParseAllowedIPs.
	AllowedIPs []string `json:"allowed_ips,omitempty"`
	// MaxClientConn caps this branch's client connections on a node; 0:
	// pool.max_branch_client_conn applies.
	MaxClientConn int `json:"max_client_conn,omitempty"`
	// ExpiresAt, when set, is when the branch expires: the reaper then
	// deletes it (see Expired), and its connected clients are told so.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// ExpireCascade lets the reaper delete the branch's descendants with
	// it; without it an expired branch with children waits for them to go.
	ExpireCascade bool `json:"expire_cascade,omitempty"`
	// ResetAt is when the branch was last reset to its parent's state.
	ResetAt time.Time `json:"reset_at,omitzero"`
}

// Expired reports whether b has an expiry that now has reached.
func (b Branch) Expired(now time.Time) bool {
	return !b.ExpiresAt.IsZero() && !now.Before(b.ExpiresAt)
}

// Registry stores branches. The embedded implementation keeps them in a
// JSON file under data_dir; the Consul implementation (issue 6) keeps them in
// Consul KV with check-and-set.
type Registry interface {
	Get(ctx context.Context, name string) (Branch, error)
	List(ctx context.Context) ([]Branch, error)
	// Create fails with ErrBranchExists when the name is taken.
	Create(ctx context.Context, b Branch) error
	// Delete fails with ErrBranchNotFound when the name is unknown.
	Delete(ctx context.Context, name string) error
	// Update applies change to the branch called name and stores the
	// result unless change fails; a concurrent update is never lost (the
	// Consul registry retries a check-and-set, calling change again on
	// what it reads). Name and lineage cannot be changed. It fails with
	// ErrBranchNotFound when the name is unknown.
	Update(ctx context.Context, name string, change func(*Branch) error) (Branch, error)
}

var (
	// ErrBranchNotFound: no branch of that name.
	ErrBranchNotFound = errors.New("branch does not exist")
	// ErrBranchExists: a branch of that name exists already.
	ErrBranchExists = errors.New("branch already exists")
	// ErrInvalidName: the name is not a DNS label.
	ErrInvalidName = errors.New("invalid branch name")
	// ErrInvalidSetting: a branch setting (allowed IPs, a limit) is not
	// valid.
	ErrInvalidSetting = errors.New("invalid branch setting")
)

var nameRE = regexp.MustCompile(`^[a-z0-9-]{1,63}$`)

// PoolerSuffix on a routed branch name selects transaction pooling, so no
// branch may itself end in it.
const PoolerSuffix = "-pooler"

// ConsoleDatabase is the database name that reaches the admin console
// instead of a branch, so no branch may take it.
const ConsoleDatabase = "neonproxy"

// ValidateName checks that name is a DNS label as the contract requires:
// [a-z0-9-]{1,63}, does not end in PoolerSuffix and is not ConsoleDatabase.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w %q: use 1 to 63 characters from a-z, 0-9 and '-'", ErrInvalidName, name)
	}
	if strings.HasSuffix(name, PoolerSuffix) {
		return fmt.Errorf("%w %q: the suffix %q is reserved for selecting transaction pooling", ErrInvalidName, name, PoolerSuffix)
	}
	if name == ConsoleDatabase {
		return fmt.Errorf("%w %q: the name is reserved for the admin console (psql -d %s)", ErrInvalidName, name, ConsoleDatabase)
	}
	return nil
}

// prepareCreate validates a branch to create (ErrInvalidName) and sets
// CreatedAt to now when zero: what every Registry's Create does first.
func prepareCreate(b *Branch) error {
	if err := ValidateName(b.Name); err != nil {
		return fmt.Errorf("create branch: %w", err)
	}
	if b.Parent != "" {
		if err := ValidateName(b.Parent); err != nil {
			return fmt.Errorf("create branch %s: parent: %w", b.Name, err)
		}
	}
	if b.CreatedAt.IsZero() {
		b.CreatedAt = time.Now().UTC()
	}
	return nil
}

// applyUpdate runs change on a copy of b and checks that the result keeps
// b's identity and valid settings: what every Registry's Update does.
func applyUpdate(b Branch, change func(*Branch) error) (Branch, error) {
	next := b
	next.AllowedIPs = append([]string(nil), b.AllowedIPs...)
	if err := change(&next); err != nil {
		return Branch{}, fmt.Errorf("update branch %s: %w", b.Name, err)
	}
	// ParentLSN may change: a reset branches again from the parent.
	if next.Name != b.Name || next.Parent != b.Parent || !next.CreatedAt.Equal(b.CreatedAt) {
		return Branch{}, fmt.Errorf("update branch %s: %w: name, parent and created_at cannot change", b.Name, ErrInvalidSetting)
	}
	if _, err := ParseAllowedIPs(next.AllowedIPs); err != nil {
		return Branch{}, fmt.Errorf("update branch %s: %w", b.Name, err)
	}
	if next.MaxClientConn < 0 {
		return Branch{}, fmt.Errorf("update branch %s: %w: max_client_conn %d: want 0 (the default) or more", b.Name, ErrInvalidSetting, next.MaxClientConn)
	}
	return next, nil
}

// ParseAllowedIPs parses an allow list: CIDRs ("10.0.0.0/8") or single
// addresses ("203.0.113.7", "::1"), normalised to their masked prefix.
func ParseAllowedIPs(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		s = strings.TrimSpace(s)
		var p netip.Prefix
		var err error
		if strings.Contains(s, "/") {
			p, err = netip.ParsePrefix(s)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(s); err == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: allowed IP %q: want a CIDR (10.0.0.0/8) or an address (203.0.113.7)", ErrInvalidSetting, s)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 { // ::ffff:10.0.0.0/104 is 10.0.0.0/8
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Allowed reports whether ip may reach a branch whose allow list is
// prefixes (empty: everyone).
func Allowed(prefixes []netip.Prefix, ip netip.Addr) bool {
	if len(prefixes) == 0 {
		return true
	}
	ip = ip.Unmap()
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

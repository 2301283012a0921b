package router

import (
	"context"
	"errors"
	"fmt"
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
}

var (
	// ErrBranchNotFound: no branch of that name.
	ErrBranchNotFound = errors.New("branch does not exist")
	// ErrBranchExists: a branch of that name exists already.
	ErrBranchExists = errors.New("branch already exists")
	// ErrInvalidName: the name is not a DNS label.
	ErrInvalidName = errors.New("invalid branch name")
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

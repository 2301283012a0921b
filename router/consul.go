package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// DefaultConsulPrefix is where branches live in Consul KV: one key per
// branch, <prefix>NAME, holding the Branch as JSON. Keys below a branch
// (<prefix>NAME/compute: the lock of the node that runs its compute) belong
// to it.
const DefaultConsulPrefix = "neonproxy/branches/"

// ConsulRegistry keeps branches in Consul KV. Create and Delete are
// check-and-set operations, so two nodes creating the same name get one
// success and one ErrBranchExists, whatever their timing.
type ConsulRegistry struct {
	kv     *api.KV
	prefix string

	// mu guards known: the branches last read, written or watched. Get
	// answers from it while Watch runs (no Consul round trip per client)
	// and, whatever the watch, while Consul cannot be reached.
	mu struct {
		sync.Mutex
		known    map[string]Branch
		watching bool // known is kept current by Watch
	}
}

// Watch keeps the known branches current with blocking queries on the
// registry's keys until ctx ends, so that Get costs no Consul round trip
// for a known branch (a branch created elsewhere a moment ago is still read
// from Consul; one deleted elsewhere stays routable until the next answer,
// milliseconds later).
func (r *ConsulRegistry) Watch(ctx context.Context) {
	defer func() {
		r.mu.Lock()
		r.mu.watching = false
		r.mu.Unlock()
	}()
	watchPrefix(ctx, r.kv, r.prefix, func(pairs api.KVPairs) {
		known := map[string]Branch{}
		for _, p := range pairs {
			if strings.Contains(strings.TrimPrefix(p.Key, r.prefix), "/") {
				continue
			}
			if b, err := decodeBranch(p); err == nil {
				known[b.Name] = b
			}
		}
		r.mu.Lock()
		r.mu.known, r.mu.watching = known, true
		r.mu.Unlock()
	}, func(error) {
		r.mu.Lock()
		r.mu.watching = false // answers may be stale: read through
		r.mu.Unlock()
	})
}

var _ Registry = (*ConsulRegistry)(nil)

// OpenConsul connects to the Consul agent at addr (host:port of its HTTP
// API) and keeps branches under prefix (DefaultConsulPrefix when empty).
// It checks that the agent answers and has a leader.
func OpenConsul(ctx context.Context, consul Consul, prefix string) (*ConsulRegistry, error) {
	if prefix == "" {
		prefix = DefaultConsulPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	c, err := consul.client()
	if err != nil {
		return nil, err
	}
	addr := consul.Address
	// A registry without a leader would fail every write: say so at start.
	for {
		leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		if err == nil && leader != "" {
			break
		}
		if err == nil {
			err = errors.New("no leader elected")
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("consul %s: %w (%v)", addr, err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	r := &ConsulRegistry{kv: c.KV(), prefix: prefix}
	r.mu.known = map[string]Branch{}
	return r, nil
}

func (r *ConsulRegistry) remember(b Branch) {
	r.mu.Lock()
	r.mu.known[b.Name] = b
	r.mu.Unlock()
}

func (r *ConsulRegistry) forget(name string) {
	r.mu.Lock()
	delete(r.mu.known, name)
	r.mu.Unlock()
}

func (r *ConsulRegistry) key(name string) string { return r.prefix + name }

// Consul is how to reach the Consul agent.
type Consul struct {
	Address string // host:port of the agent's HTTP API
	// Token is the ACL token every call sends (empty: the agent's
	// default); it needs write access to the KV prefixes, sessions and the
	// node's service.
	Token string
}

// client is an API client of the agent.
func (c Consul) client() (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token = c.Address, c.Token
	cl, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul %s: %w", c.Address, err)
	}
	return cl, nil
}

func decodeBranch(p *api.KVPair) (Branch, error) {
	var b Branch
	if err := json.Unmarshal(p.Value, &b); err != nil {
		return b, fmt.Errorf("consul key %s: %w", p.Key, err)
	}
	return b, nil
}

// Get returns the branch called name, or an error wrapping ErrBranchNotFound.
func (r *ConsulRegistry) Get(ctx context.Context, name string) (Branch, error) {
	if err := ValidateName(name); err != nil {
		return Branch{}, fmt.Errorf("get branch %s: %w", name, ErrBranchNotFound)
	}
	r.mu.Lock()
	b, ok := r.mu.known[name]
	watching := r.mu.watching
	r.mu.Unlock()
	if ok && watching {
		return b, nil
	}
	p, _, err := r.kv.Get(r.key(name), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		// Consul out of reach: a branch known here still routes (its
		// compute may be running); creating and deleting wait for Consul.
		if ok && api.IsRetryableError(err) {
			return b, nil
		}
		return Branch{}, fmt.Errorf("get branch %s: %w", name, err)
	}
	if p == nil {
		r.forget(name)
		return Branch{}, fmt.Errorf("get branch %s: %w", name, ErrBranchNotFound)
	}
	b, err = decodeBranch(p)
	if err == nil {
		r.remember(b)
	}
	return b, err
}

// List returns all branches ordered by name.
func (r *ConsulRegistry) List(ctx context.Context) ([]Branch, error) {
	pairs, _, err := r.kv.List(r.prefix, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list branches: %w", err)
	}
	out := make([]Branch, 0, len(pairs))
	for _, p := range pairs {
		if strings.Contains(strings.TrimPrefix(p.Key, r.prefix), "/") {
			continue // a key of a branch (its compute lock), not a branch
		}
		b, err := decodeBranch(p)
		if err != nil {
			return nil, err
		}
		r.remember(b)
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Create adds b if no branch has its name (check-and-set on index 0). It
// validates names as EmbeddedRegistry.Create does and sets CreatedAt when
// zero.
func (r *ConsulRegistry) Create(ctx context.Context, b Branch) error {
	if err := prepareCreate(&b); err != nil {
		return err
	}
	v, err := json.Marshal(b)
	if err != nil {
		return err
	}
	ok, _, err := r.kv.CAS(&api.KVPair{Key: r.key(b.Name), Value: v, ModifyIndex: 0}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("create branch %s: %w", b.Name, err)
	}
	if !ok {
		return fmt.Errorf("create branch %s: %w", b.Name, ErrBranchExists)
	}
	r.remember(b)
	return nil
}

// Delete removes the branch called name (check-and-set on the index it was
// read at, so a branch re-created in between is not deleted by mistake) and
// the keys below it.
func (r *ConsulRegistry) Delete(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("delete branch %s: %w", name, ErrBranchNotFound)
	}
	for {
		p, _, err := r.kv.Get(r.key(name), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("delete branch %s: %w", name, err)
		}
		if p == nil {
			return fmt.Errorf("delete branch %s: %w", name, ErrBranchNotFound)
		}
		ok, _, err := r.kv.DeleteCAS(p, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("delete branch %s: %w", name, err)
		}
		if ok {
			break
		}
		// Changed since it was read: read it again.
	}
	r.forget(name)
	if _, err := r.kv.DeleteTree(r.key(name)+"/", (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("delete branch %s: keys below it: %w", name, err)
	}
	return nil
}

// Update applies change to the branch called name with a check-and-set on
// the index it was read at; when another node changed the branch in
// between, it reads it again and calls change again.
func (r *ConsulRegistry) Update(ctx context.Context, name string, change func(*Branch) error) (Branch, error) {
	if err := ValidateName(name); err != nil {
		return Branch{}, fmt.Errorf("update branch %s: %w", name, ErrBranchNotFound)
	}
	for {
		p, _, err := r.kv.Get(r.key(name), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		if err != nil {
			return Branch{}, fmt.Errorf("update branch %s: %w", name, err)
		}
		if p == nil {
			return Branch{}, fmt.Errorf("update branch %s: %w", name, ErrBranchNotFound)
		}
		b, err := decodeBranch(p)
		if err != nil {
			return Branch{}, err
		}
		next, err := applyUpdate(b, change)
		if err != nil {
			return Branch{}, err
		}
		v, err := json.Marshal(next)
		if err != nil {
			return Branch{}, err
		}
		ok, _, err := r.kv.CAS(&api.KVPair{Key: p.Key, Value: v, ModifyIndex: p.ModifyIndex}, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			return Branch{}, fmt.Errorf("update branch %s: %w", name, err)
		}
		if ok {
			r.remember(next)
			return next, nil
		}
		// Changed since it was read: read it again.
	}
}

// Close releases nothing: the client holds no connection of its own.
func (r *ConsulRegistry) Close() error { return nil }

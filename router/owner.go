package router

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Owners decides which node runs a branch's compute: at most one node holds
// a branch at a time, cluster-wide. A node that wants to start a compute
// must hold the branch; the others route to the holder.
type Owners interface {
	// TryAcquire makes this node the branch's owner if no node is. It
	// returns ErrOwned (wrapped, naming the owner) when another node is.
	TryAcquire(ctx context.Context, branch string) (Ownership, error)
	// Owner is the address of the node that holds branch ("" when none).
	Owner(ctx context.Context, branch string) (string, error)
}

// Ownership is a held branch.
type Ownership interface {
	// Lost is closed when the ownership ends without Release (the node's
	// Consul session expired or was invalidated): the compute must stop,
	// another node may start it.
	Lost() <-chan struct{}
	// Release gives the branch up.
	Release() error
}

// ErrOwned: another node holds the branch (see OwnedError).
var ErrOwned = errors.New("branch is owned by another node")

// OwnedError says which node holds a branch; it is ErrOwned.
type OwnedError struct {
	Branch, Owner string
}

func (e *OwnedError) Error() string {
	return fmt.Sprintf("own branch %s: %v (%s)", e.Branch, ErrOwned, e.Owner)
}

func (e *OwnedError) Is(target error) bool { return target == ErrOwned }

// ConsulOwners keeps branch ownership as Consul session locks on
// <prefix>NAME/compute, whose value is the holder's address. A node's
// session lives as long as it renews it (SessionTTL); when the node dies,
// the session expires and the lock is free at once (lock-delay off: the
// compute's WAL keepers fence a stale compute, see walkeeper).
type ConsulOwners struct {
	client *api.Client
	prefix string
	node   string // this node's address (the lock's value)
	ttl    time.Duration

	// mu guards the owners Watch keeps: who holds each branch, as of the
	// last answer of a blocking query (synced: at least one answer).
	mu struct {
		sync.Mutex
		synced bool
		owners map[string]string
		checks []string // health checks the lock sessions are tied to (TieTo)
		// frontDoor is the node's Consul service (TieTo): each compute
		// it holds is registered with a check that follows it.
		frontDoor string
	}
}

var _ Owners = (*ConsulOwners)(nil)

// lockAttempt bounds one try at a branch lock.
const lockAttempt = 500 * time.Millisecond

// SessionTTL is how long a dead node keeps its branches: Consul's minimum.
const SessionTTL = 10 * time.Second

// NewConsulOwners returns ownership for node (its address, what other nodes
// route to) on the agent at addr, under prefix (DefaultConsulPrefix when
// empty).
func NewConsulOwners(consul Consul, prefix, node string) (*ConsulOwners, error) {
	if prefix == "" {
		prefix = DefaultConsulPrefix
	}
	c, err := consul.client()
	if err != nil {
		return nil, err
	}
	return &ConsulOwners{client: c, prefix: prefix, node: node, ttl: SessionTTL}, nil
}

func (o *ConsulOwners) key(branch string) string { return o.prefix + branch + "/compute" }

// TieTo ties the sessions of later locks to health checks (with
// ClusterNodes.SessionChecks: the node's front door): when one goes
// critical, Consul ends the session and frees the node's branches at once,
// rather than after the session TTL. frontDoor is the node's Consul
// service (ClusterNodes.Service): from then on each branch the node holds
// is registered as a service ComputeService (tag: the branch; address:
// the node's front door) whose check follows the front door's, so
// operators and tools see in Consul's catalog where each compute runs.
func (o *ConsulOwners) TieTo(checks []string, frontDoor string) {
	o.mu.Lock()
	o.mu.checks = checks
	o.mu.frontDoor = frontDoor
	o.mu.Unlock()
}

// ComputeService is the Consul service name of running computes.
const ComputeService = "neonproxy-compute"

// registerCompute registers branch's compute on this node (see TieTo)
// and returns its service ID ("" when there is no front door to follow).
func (o *ConsulOwners) registerCompute(ctx context.Context, branch string) (string, error) {
	o.mu.Lock()
	frontDoor := o.mu.frontDoor
	o.mu.Unlock()
	if frontDoor == "" {
		return "", nil
	}
	host, portStr, _ := net.SplitHostPort(o.node)
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return "", fmt.Errorf("node address %q: %w", o.node, err)
	}
	id := frontDoor + "-compute-" + branch
	err = o.client.Agent().ServiceRegisterOpts(&api.AgentServiceRegistration{
		ID: id, Name: ComputeService, Tags: []string{branch}, Address: host, Port: port,
		Meta: map[string]string{"branch": branch, "node": o.node},
		Check: &api.AgentServiceCheck{
			CheckID: id + "-alive", Name: "compute of " + branch + " on " + o.node, AliasService: frontDoor,
			DeregisterCriticalServiceAfter: "1m",
		},
	}, api.ServiceRegisterOpts{}.WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("register the compute of %s as a Consul service: %w", branch, err)
	}
	return id, nil
}

// TryAcquire implements Owners. A lock this node's previous process still
// holds (same node address, session not expired yet) is taken over.
func (o *ConsulOwners) TryAcquire(ctx context.Context, branch string) (Ownership, error) {
	return o.tryAcquire(ctx, branch, false, 0)
}

func (o *ConsulOwners) tryAcquire(ctx context.Context, branch string, retried bool, attempt int) (Ownership, error) {
	if err := ValidateName(branch); err != nil {
		return nil, err
	}
	o.mu.Lock()
	checks := o.mu.checks
	o.mu.Unlock()
	lock, err := o.client.LockOpts(&api.LockOptions{
		Key:   o.key(branch),
		Value: []byte(o.node),
		// With SessionOpts the api package ignores SessionName and
		// SessionTTL: everything goes here. No lock-delay: the keepers
		// fence a stale compute, so the next owner need not wait.
		SessionOpts: &api.SessionEntry{
			Name:      "neonproxy compute " + branch + " on " + o.node,
			TTL:       o.ttl.String(),
			LockDelay: time.Millisecond,
			Behavior:  api.SessionBehaviorDelete,
			Checks:    checks,
		},
		LockTryOnce:  true,
		LockWaitTime: 100 * time.Millisecond,
		// While Consul cannot be reached the compute keeps running (its
		// clients keep working): the lock counts as lost only when Consul
		// answers that it is, e.g. after the session expired.
		MonitorRetries:   math.MaxInt32,
		MonitorRetryTime: time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("own branch %s: %w", branch, err)
	}
	// An attempt that meets a lock-delay (1 ms here) would wait the api
	// package's fixed 5 s before looking again: stop it sooner and retry.
	actx, cancelAttempt := context.WithTimeout(ctx, lockAttempt)
	defer cancelAttempt()
	stop := make(chan struct{})
	cancelStop := context.AfterFunc(actx, func() { close(stop) })
	lost, err := lock.Lock(stop)
	if !cancelStop() && ctx.Err() != nil {
		// ctx ended during the attempt: give back what was won.
		if lost != nil {
			_ = lock.Unlock()
		}
		return nil, fmt.Errorf("own branch %s: %w", branch, ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("own branch %s: %w", branch, err)
	}
	if lost == nil {
		p, _, err := o.client.KV().Get(o.key(branch), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		if err == nil && p != nil && p.Session != "" && string(p.Value) == o.node && !retried {
			// Held by this node's previous process, whose session has not
			// expired yet (a restart): this node takes it over.
			if _, err := o.client.Session().Destroy(p.Session, (&api.WriteOptions{}).WithContext(ctx)); err == nil {
				return o.tryAcquire(ctx, branch, true, attempt)
			}
		}
		owner, _ := o.Owner(ctx, branch)
		if owner == "" && attempt < 3 {
			// Free again by now (released or expired while we tried).
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("own branch %s: %w", branch, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
			return o.tryAcquire(ctx, branch, retried, attempt+1)
		}
		return nil, &OwnedError{Branch: branch, Owner: owner}
	}
	service, err := o.registerCompute(ctx, branch)
	if err != nil {
		_ = lock.Unlock()
		return nil, fmt.Errorf("own branch %s: %w", branch, err)
	}
	return &consulOwnership{lock: lock, lost: lost, agent: o.client.Agent(), service: service}, nil
}

// Owner implements Owners.
func (o *ConsulOwners) Owner(ctx context.Context, branch string) (string, error) {
	p, _, err := o.client.KV().Get(o.key(branch), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("owner of branch %s: %w", branch, err)
	}
	if p == nil || p.Session == "" {
		return "", nil
	}
	return string(p.Value), nil
}

// Watch keeps a view of every branch's owner with blocking queries on the
// lock keys (one outstanding query, answered when a lock changes hands)
// until ctx ends, so that routing a client to the node that runs its branch
// costs no Consul round trip. While Consul cannot be reached the view stays
// as it was.
func (o *ConsulOwners) Watch(ctx context.Context) {
	watchPrefix(ctx, o.client.KV(), o.prefix, func(pairs api.KVPairs) {
		owners := map[string]string{}
		for _, p := range pairs {
			name, ok := strings.CutSuffix(strings.TrimPrefix(p.Key, o.prefix), "/compute")
			if ok && p.Session != "" {
				owners[name] = string(p.Value)
			}
		}
		o.mu.Lock()
		o.mu.synced, o.mu.owners = true, owners
		o.mu.Unlock()
	}, func(error) {})
}

// watchPrefix runs blocking queries on the keys under prefix until ctx
// ends, calling seen with every answer (one outstanding query, answered
// when a key changes) and failed with each error (then retrying after a
// second).
func watchPrefix(ctx context.Context, kv *api.KV, prefix string, seen func(api.KVPairs), failed func(error)) {
	var index uint64
	for ctx.Err() == nil {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: time.Minute}).WithContext(ctx)
		pairs, meta, err := kv.List(prefix, q)
		if err != nil {
			failed(err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		seen(pairs)
		if meta.LastIndex < index {
			index = 0 // Consul's index went back (a restarted agent)
		} else {
			index = meta.LastIndex
		}
	}
}

// HeldElsewhere reports, from the watched view, the node that holds branch
// when that is another node ("" when it is free, held here, or the view is
// not synced yet).
func (o *ConsulOwners) HeldElsewhere(branch string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if owner := o.mu.owners[branch]; o.mu.synced && owner != o.node {
		return owner
	}
	return ""
}

type consulOwnership struct {
	lock    *api.Lock
	lost    <-chan struct{}
	agent   *api.Agent
	service string // the compute's Consul service ("": none)
}

func (c *consulOwnership) Lost() <-chan struct{} { return c.lost }

func (c *consulOwnership) Release() error {
	var errs []error
	if c.service != "" {
		if err := c.agent.ServiceDeregister(c.service); err != nil {
			errs = append(errs, fmt.Errorf("deregister %s: %w", c.service, err))
		}
	}
	if err := c.lock.Unlock(); err != nil && !errors.Is(err, api.ErrLockNotHeld) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

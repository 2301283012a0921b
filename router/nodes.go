package router

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// MaxNodes bounds the cluster: a node's index fits the bits cancel keys
// reserve for it.
const MaxNodes = 1024

// DefaultNodesPrefix is where nodes claim their index in Consul KV:
// <prefix>N holds the address of the node with index N, under that node's
// session lock.
const DefaultNodesPrefix = "neonproxy/nodes/"

// ClusterNodes gives each node of a Consul cluster a small index, unique
// while the node lives, and finds a node's address from its index: cancel
// keys carry the index of the node that issued them, so any node can send a
// CancelRequest where it belongs.
type ClusterNodes struct {
	client  *api.Client
	prefix  string
	self    int
	node    string
	lock    *api.Lock
	service string // this node's Consul service ID
	check   string // its health check: a TCP connect to the front door
}

// JoinCluster claims the lowest free index for node (its front-door
// address, host:port) on the agent at addr. A previous process of the same
// node that still holds an index (its session not expired) is taken over.
// Once the front door listens, RegisterFrontDoor makes the node a Consul
// service with a health check.
func JoinCluster(ctx context.Context, consul Consul, node string) (*ClusterNodes, error) {
	c, err := consul.client()
	if err != nil {
		return nil, err
	}
	if _, _, err := net.SplitHostPort(node); err != nil {
		return nil, fmt.Errorf("join cluster: node address %q: want host:port", node)
	}
	id := "neonproxy-" + strings.NewReplacer(":", "-", "[", "", "]", "").Replace(node)
	cn := &ClusterNodes{client: c, prefix: DefaultNodesPrefix, self: -1, node: node, service: id, check: id + "-alive"}
	pairs, _, err := c.KV().List(cn.prefix, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("join cluster: %w", err)
	}
	taken := map[string]*api.KVPair{}
	for _, p := range pairs {
		taken[p.Key] = p
	}
	for i := 0; i < MaxNodes; i++ {
		key := cn.prefix + strconv.Itoa(i)
		if p := taken[key]; p != nil && p.Session != "" {
			if string(p.Value) != node {
				continue
			}
			// Our previous process: its session goes, the index is ours.
			if _, err := c.Session().Destroy(p.Session, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
				return nil, fmt.Errorf("join cluster: %w", err)
			}
		}
		lock, err := c.LockOpts(&api.LockOptions{
			Key:   key,
			Value: []byte(node),
			SessionOpts: &api.SessionEntry{
				Name: "neonproxy node " + node, TTL: SessionTTL.String(),
				LockDelay: time.Millisecond, Behavior: api.SessionBehaviorDelete,
			},
			LockTryOnce: true, LockWaitTime: 100 * time.Millisecond,
			MonitorRetries: math.MaxInt32, MonitorRetryTime: time.Second,
		})
		if err != nil {
			return nil, err
		}
		actx, cancel := context.WithTimeout(ctx, lockAttempt)
		stop := make(chan struct{})
		stopAfter := context.AfterFunc(actx, func() { close(stop) })
		lost, err := lock.Lock(stop)
		stopAfter()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("join cluster: %w", err)
		}
		if lost != nil {
			cn.self, cn.lock = i, lock
			return cn, nil
		}
	}
	return nil, fmt.Errorf("join cluster: all %d node indexes are taken", MaxNodes)
}

// Service is the node's Consul service ID (registered by RegisterFrontDoor).
func (cn *ClusterNodes) Service() string { return cn.service }

// RegisterFrontDoor registers the node as a Consul service "neonproxy"
// whose health check connects to its front door every second. Sessions tied
// to SessionChecks end as soon as the front door stops answering. Call it
// once the front door listens (the check must pass from the start).
func (cn *ClusterNodes) RegisterFrontDoor(ctx context.Context) error {
	host, portStr, _ := net.SplitHostPort(cn.node)
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("node address %q: %w", cn.node, err)
	}
	c := cn.client
	node := cn.node
	id := cn.service
	// A check left by this node's previous process is critical (it failed
	// while the node was down) and keeps that status through a
	// re-registration, and Consul refuses to tie sessions to a critical
	// check: start from a fresh one.
	_ = c.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx))
	err = c.Agent().ServiceRegisterOpts(&api.AgentServiceRegistration{
		ID: id, Name: "neonproxy", Address: host, Port: port,
		Check: &api.AgentServiceCheck{
			CheckID: cn.check, Name: "front door of " + node, TCP: node,
			Interval: "1s", Timeout: "1s",
			// Passing from the start, so sessions can be tied to it now.
			Status:                         api.HealthPassing,
			DeregisterCriticalServiceAfter: "1m",
		},
	}, api.ServiceRegisterOpts{}.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("register the node's service: %w", err)
	}
	return nil
}

// HealthCheck is the ID of the node's front-door check.
func (cn *ClusterNodes) HealthCheck() string { return cn.check }

// SessionChecks are the checks a session of this node is tied to: the
// agent's own (serfHealth) and the front door's.
func (cn *ClusterNodes) SessionChecks() []string { return []string{"serfHealth", cn.check} }

// Self is this node's index.
func (cn *ClusterNodes) Self() int { return cn.self }

// Addr is the front-door address of the node with index idx (read from
// Consul each time: an index is reused once its node is gone).
func (cn *ClusterNodes) Addr(ctx context.Context, idx int) (string, error) {
	if idx == cn.self {
		return cn.node, nil
	}
	p, _, err := cn.client.KV().Get(cn.prefix+strconv.Itoa(idx), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("node %d: %w", idx, err)
	}
	if p == nil || p.Session == "" {
		return "", fmt.Errorf("node %d: not in the cluster", idx)
	}
	return string(p.Value), nil
}

// IsNode reports whether ip is the address of a node of the cluster (the
// host of a front-door address under the nodes prefix; host names are
// resolved). Errors count as no.
func (cn *ClusterNodes) IsNode(ctx context.Context, ip netip.Addr) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pairs, _, err := cn.client.KV().List(cn.prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	for _, p := range pairs {
		if p.Session == "" {
			continue // an index no node holds
		}
		host, _, err := net.SplitHostPort(string(p.Value))
		if err != nil {
			continue
		}
		if a, err := netip.ParseAddr(host); err == nil {
			if a.Unmap() == ip {
				return true
			}
			continue
		}
		addrs, _ := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		for _, a := range addrs {
			if a.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// Leave gives the index up and removes the node's service.
func (cn *ClusterNodes) Leave() error {
	var err error
	if cn.lock != nil {
		err = cn.lock.Unlock()
	}
	if derr := cn.client.Agent().ServiceDeregister(cn.service); err == nil {
		err = derr
	}
	return err
}

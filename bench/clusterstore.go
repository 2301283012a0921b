package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// The cluster section's shared storage: one standalone `neonproxy
// pagestore` and clusterKeepers standalone `neonproxy walkeeper`s
// (walkeeper.quorum clusterQuorum), each with a token, in
// <tmp>/cluster/{pagestore,walkeepers}; both nodes name them in
// pagestore.address and walkeeper.peers, so that either node can start
// main from the pagestore's image plus the keepers' WAL.
const (
	clusterKeepers = standaloneKeepers // 3
	clusterQuorum  = standaloneQuorum  // 2
)

var pagestoreReadyLine = regexp.MustCompile(`pagestore is ready: http://(\S+)`)

// pagestoreProc is a running standalone `neonproxy pagestore`.
type pagestoreProc struct {
	*daemon
	addr    string // host:port of its HTTP API (pagestore.listen)
	cfgPath string
	dataDir string
}

// startPagestore starts a standalone pagestore from the binary under test
// in e (config <e>/pagestore.yaml, data_dir e's directory, a free
// 127.0.0.1 port, pagestore.token token, log <e>/pagestore.log) and
// returns once it has printed its ready line and answered GET /healthz.
func startPagestore(ctx context.Context, o options, e *env, token string) (*pagestoreProc, error) {
	bin, err := neonproxyBin(o)
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(e.dir, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	ps := &pagestoreProc{cfgPath: e.path("pagestore.yaml"), dataDir: e.dir}
	if err := os.WriteFile(ps.cfgPath, []byte(pagestoreConfig(ps.dataDir, port, token)), 0o600); err != nil {
		return nil, fmt.Errorf("write pagestore config: %w", err)
	}
	d, addr, err := startDaemon(ctx, "pagestore", bin, e.path("pagestore.log"), pagestoreReadyLine, "pagestore", "--config", ps.cfgPath)
	if err != nil {
		return nil, err
	}
	if err := healthz(ctx, addr); err != nil {
		d.stop()
		return nil, fmt.Errorf("pagestore: %w", err)
	}
	ps.daemon, ps.addr = d, addr
	return ps, nil
}

// pagestoreConfig is a standalone pagestore's config.
func pagestoreConfig(dataDir string, port int, token string) string {
	return fmt.Sprintf("data_dir: %s\npagestore:\n  listen: 127.0.0.1:%d\n  token: %s\nlog:\n  level: info\n",
		dataDir, port, strconv.Quote(token))
}

// startShared starts the pagestore and the keepers (each service with its
// own generated token) that both nodes will use.
func (s *cluster) startShared(ctx context.Context) error {
	s.storeToken, s.keeperToken = randomPassword(), randomPassword()
	ps, err := startPagestore(ctx, s.opts, &env{dir: s.env.path("pagestore"), keep: s.env.keep}, s.storeToken)
	if err != nil {
		return err
	}
	s.ps = ps
	s.rep.pagestoreAddr = ps.addr
	s.rep.command(fmt.Sprintf("neonproxy pagestore --config %s   # data_dir: %s, pagestore.listen: %s, pagestore.token: <generated>",
		ps.cfgPath, ps.dataDir, ps.addr))
	ks, err := startTokenWalkeepers(ctx, s.opts, &env{dir: s.env.path("walkeepers"), keep: s.env.keep}, clusterKeepers, s.keeperToken)
	if err != nil {
		return err
	}
	s.keepers = ks
	s.rep.keeperAddrs = ks.addrs
	for i, addr := range ks.addrs {
		s.rep.command(fmt.Sprintf("neonproxy walkeeper --config %s   # data_dir: %s, walkeeper.listen: %s, walkeeper.token: <generated>",
			ks.configPath(ks.names[i]), ks.dirs[i], addr))
	}
	return nil
}

// nodeOptions are the options of a cluster node: the agent, main's
// password, the shared pagestore and keepers.
func (s *cluster) nodeOptions() options {
	o := s.opts
	o.consulAddress, o.bootstrapPassword = s.agent.addr, s.password
	if s.ps != nil {
		o.pagestoreAddress, o.pagestoreToken = s.ps.addr, s.storeToken
	}
	if s.keepers != nil {
		o.walkeeperPeers, o.walkeeperQuorum, o.walkeeperToken = s.keepers.addrs, clusterQuorum, s.keeperToken
		// As on separate machines: keepers stream through the nodes'
		// front doors, not the computes' unix sockets.
		o.walkeeperViaFrontDoor = true
	}
	return o
}

// sharedComment describes a node's shared-storage keys for the commands
// block.
func (s *cluster) sharedComment() string {
	if s.ps == nil || s.keepers == nil {
		return ""
	}
	return fmt.Sprintf(", pagestore.address %s, walkeeper: {peers: [%s], quorum: %d, via_front_door: true} (+ both tokens)",
		s.ps.addr, strings.Join(s.keepers.addrs, ", "), clusterQuorum)
}

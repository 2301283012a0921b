package router

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/neonproxy/neonproxy/internal/testconsul"
)

// TestConsulRegistry runs the Registry contract on Consul KV (a real
// `consul agent -dev`), then checks what only a shared store shows: two
// clients (two nodes) racing to create one name get one success, and keys
// below a branch (its compute lock) are neither branches nor left behind.
func TestConsulRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Consul agent")
	}
	agent := testconsul.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := 0
	open := func(t *testing.T, prefix string) *ConsulRegistry {
		t.Helper()
		r, err := OpenConsul(ctx, Consul{Address: agent.Addr}, prefix)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	registryContract(t, func(t *testing.T) Registry {
		n++
		return open(t, fmt.Sprintf("contract%d/branches", n))
	})

	t.Run("two nodes race", func(t *testing.T) {
		raceCreate(t, open(t, "race/branches/"), open(t, "race/branches/"))
	})

	t.Run("watched cache", func(t *testing.T) {
		r, other := open(t, "watched/branches/"), open(t, "watched/branches/")
		wctx, stop := context.WithCancel(ctx)
		defer stop()
		go r.Watch(wctx)
		if err := other.Create(ctx, Branch{Name: "elsewhere"}); err != nil {
			t.Fatal(err)
		}
		// Created by another node: found at once (read through on a miss).
		if _, err := r.Get(ctx, "elsewhere"); err != nil {
			t.Fatal(err)
		}
		// Deleted by another node: gone from the watched view shortly.
		if err := other.Delete(ctx, "elsewhere"); err != nil {
			t.Fatal(err)
		}
		until(t, "the deletion to reach the watched view", func() bool {
			_, err := r.Get(ctx, "elsewhere")
			return errors.Is(err, ErrBranchNotFound)
		})
	})

	t.Run("keys below a branch", func(t *testing.T) {
		r := open(t, "")
		if err := r.Create(ctx, Branch{Name: "main"}); err != nil {
			t.Fatal(err)
		}
		c, err := api.NewClient(&api.Config{Address: agent.Addr})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.KV().Put(&api.KVPair{Key: DefaultConsulPrefix + "main/compute", Value: []byte("node-a")}, nil); err != nil {
			t.Fatal(err)
		}
		bs, err := r.List(ctx)
		if err != nil || len(bs) != 1 || bs[0].Name != "main" {
			t.Fatalf("List = %+v, %v; want only main", bs, err)
		}
		if err := r.Delete(ctx, "main"); err != nil {
			t.Fatal(err)
		}
		if keys, _, err := c.KV().Keys(DefaultConsulPrefix, "", nil); err != nil || len(keys) != 0 {
			t.Fatalf("keys left after Delete: %v, %v", keys, err)
		}
	})

	t.Run("one owner per branch", func(t *testing.T) {
		a, err := NewConsulOwners(Consul{Address: agent.Addr}, "own/", "node-a:5432")
		if err != nil {
			t.Fatal(err)
		}
		b, err := NewConsulOwners(Consul{Address: agent.Addr}, "own/", "node-b:5432")
		if err != nil {
			t.Fatal(err)
		}
		wctx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		go b.Watch(wctx)
		oa, err := a.TryAcquire(ctx, "main")
		if err != nil {
			t.Fatal(err)
		}
		// b's watched view learns it without asking.
		until(t, "b to see node-a holding main", func() bool { return b.HeldElsewhere("main") == "node-a:5432" })
		if a.HeldElsewhere("main") != "" {
			t.Fatal("a's view (not watching) claims an owner")
		}
		if _, err := b.TryAcquire(ctx, "main"); !errors.Is(err, ErrOwned) || !strings.Contains(err.Error(), "node-a:5432") {
			t.Fatalf("second owner: %v, want ErrOwned naming node-a", err)
		}
		if got, err := b.Owner(ctx, "main"); err != nil || got != "node-a:5432" {
			t.Fatalf("Owner = %q, %v", got, err)
		}
		// Another branch is free for b.
		ob, err := b.TryAcquire(ctx, "dev")
		if err != nil {
			t.Fatal(err)
		}
		defer ob.Release()
		// a's session ends as when a dies and its TTL runs out: a learns
		// it lost the branch, b can take it.
		c, err := api.NewClient(&api.Config{Address: agent.Addr})
		if err != nil {
			t.Fatal(err)
		}
		p, _, err := c.KV().Get("own/main/compute", nil)
		if err != nil || p == nil || p.Session == "" {
			t.Fatalf("lock key: %+v, %v", p, err)
		}
		// A dead node's session expires: it has a TTL, and its lock key
		// goes with it.
		se, _, err := c.Session().Info(p.Session, nil)
		if err != nil || se == nil || se.TTL != SessionTTL.String() || se.Behavior != api.SessionBehaviorDelete {
			t.Fatalf("lock session: %+v, %v; want TTL %s, behavior delete", se, err, SessionTTL)
		}
		if _, err := c.Session().Destroy(p.Session, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case <-oa.Lost():
		case <-time.After(30 * time.Second):
			t.Fatal("a did not learn that it lost main")
		}
		ob2, err := b.TryAcquire(ctx, "main")
		if err != nil {
			t.Fatalf("b takes main after a's session ended: %v", err)
		}
		if got, _ := a.Owner(ctx, "main"); got != "node-b:5432" {
			t.Fatalf("Owner after the move = %q", got)
		}
		if err := ob2.Release(); err != nil {
			t.Fatal(err)
		}
		if got, _ := a.Owner(ctx, "main"); got != "" {
			t.Fatalf("Owner after Release = %q", got)
		}
		until(t, "b's view to drop main's owner", func() bool { return b.HeldElsewhere("main") == "" })
		if err := oa.Release(); err != nil {
			t.Fatalf("Release of a lost ownership: %v", err)
		}
	})

	t.Run("agent unreachable", func(t *testing.T) {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if _, err := OpenConsul(sctx, Consul{Address: "127.0.0.1:1"}, ""); err == nil {
			t.Fatal("OpenConsul of a closed port succeeded")
		}
	})
}

// until polls cond for up to 10 s.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConsulACL: against an agent that denies by default, the registry and
// the locks work with the token and are refused without it.
func TestConsulACL(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Consul agent")
	}
	const token = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
	agent := testconsul.StartWithACL(t, token)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		token string
		ok    bool
	}{{"", false}, {"wrong", false}, {token, true}} {
		consul := Consul{Address: agent.Addr, Token: tc.token}
		r, err := OpenConsul(ctx, consul, "acl/branches/")
		if err != nil {
			t.Fatal(err) // the leader check needs no token
		}
		err = r.Create(ctx, Branch{Name: "b" + strconv.Itoa(len(tc.token))})
		if (err == nil) != tc.ok || (!tc.ok && !strings.Contains(err.Error(), "403")) {
			t.Fatalf("token %q: Create: %v", tc.token, err)
		}
		o, err := NewConsulOwners(consul, "acl/branches/", "node:1")
		if err != nil {
			t.Fatal(err)
		}
		own, err := o.TryAcquire(ctx, "main")
		if (err == nil) != tc.ok {
			t.Fatalf("token %q: TryAcquire: %v", tc.token, err)
		}
		if own == nil {
			continue
		}
		// The watches work with the token too.
		other, _ := NewConsulOwners(consul, "acl/branches/", "node:2")
		wctx, stop := context.WithCancel(ctx)
		go other.Watch(wctx)
		go r.Watch(wctx)
		until(t, "the watched owner", func() bool { return other.HeldElsewhere("main") == "node:1" })
		until(t, "the watched registry", func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.mu.watching
		})
		stop()
		if err := own.Release(); err != nil {
			t.Fatal(err)
		}
	}
}

package proxy

import (
	"context"
	"errors"
	"testing"

	"github.com/neonproxy/neonproxy/pool"

	"github.com/neonproxy/neonproxy/router"
	"github.com/neonproxy/neonproxy/wake"
)

type nopBranches struct{}

func (nopBranches) Get(context.Context, string) (router.Branch, error) {
	return router.Branch{}, router.ErrBranchNotFound
}

type nopWaker struct{}

func (nopWaker) Acquire(context.Context, string) (*wake.Lease, error) {
	return nil, errors.New("no computes in unit tests")
}

func testPool(tb testing.TB) *pool.Pool {
	p := pool.New(pool.Options{})
	tb.Cleanup(p.Close)
	return p
}

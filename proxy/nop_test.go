package proxy

import (
	"context"
	"errors"

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

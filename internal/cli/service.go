package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/spf13/cobra"

	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/internal/httpapi"
)

// apiService is a standalone service's HTTP API as its command serves it
// (`neonproxy walkeeper`, `neonproxy pagestore`).
type apiService struct {
	name    string // "walkeeper": the config section and the log name
	listen  string
	token   string
	handler http.Handler
	dir     string // where it keeps its data, for the ready line
}

// serveAPI serves svc until ctx ends (SIGINT/SIGTERM), printing a ready
// line to out. It refuses to listen beyond loopback without a token: both
// APIs hand out data and act on computes for whoever calls them.
func serveAPI(ctx context.Context, out io.Writer, log *zap.Logger, svc apiService) error {
	if err := checkAPIListen(svc.name, svc.listen, svc.token); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", svc.listen)
	if err != nil {
		return fmt.Errorf("%s.listen: %w", svc.name, err)
	}
	srv := httpapi.Server(svc.handler)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(out, "%s is ready: http://%s (data in %s)\n", svc.name, ln.Addr(), svc.dir)
	log.Info(svc.name+" serving", zap.Stringer("addr", ln.Addr()), zap.String("dir", svc.dir))
	select {
	case <-ctx.Done():
		log.Info(svc.name + " shutting down")
	case err := <-served:
		return fmt.Errorf("%s: serve: %w", svc.name, err)
	}
	// Streams are long requests: closing their connections ends them (a
	// keeper's computes then wait for the other keepers; a compute node's
	// ingest fails and is retried at its next stop).
	if err := srv.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// checkAPIListen refuses a listen address beyond loopback without a
// token.
func checkAPIListen(name, listen, token string) error {
	loopback, err := httpapi.IsLoopback(listen)
	if err != nil {
		return fmt.Errorf("%s.listen %q: %w", name, listen, err)
	}
	if loopback || token != "" {
		return nil
	}
	return fmt.Errorf("%s.listen %s is not a loopback address: set %s.token (serve's %s.token must match) or listen on 127.0.0.1",
		name, listen, name, name)
}

// runStorageRoles runs the pagestore and walkeeper roles cfg lists, until
// ctx ends or one of them fails.
func runStorageRoles(ctx context.Context, out io.Writer, cfg config.Config, log *zap.Logger) error {
	g, ctx := errgroup.WithContext(ctx)
	if cfg.HasRole(config.RolePagestore) {
		g.Go(func() error { return runPagestore(ctx, out, cfg, log.Named("pagestore")) })
	}
	if cfg.HasRole(config.RoleWalkeeper) {
		g.Go(func() error { return runWalkeeper(ctx, out, cfg, log.Named("walkeeper")) })
	}
	return g.Wait()
}

// roleRunner runs one storage role until ctx ends.
type roleRunner func(ctx context.Context, out io.Writer, cfg config.Config, log *zap.Logger) error

// roleCmd makes cmd run one storage role as a daemon.
func roleCmd(g *globals, cmd *cobra.Command, run roleRunner) *cobra.Command {
	cmd.Args = cobra.NoArgs
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, log, ctx, done, err := g.daemon()
		if err != nil {
			return err
		}
		defer done()
		return run(ctx, cmd.OutOrStdout(), cfg, log)
	}
	return cmd
}

package cli

import (
	"context"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/pagestore"
)

func pagestoreCmd(g *globals) *cobra.Command {
	return roleCmd(g, &cobra.Command{
		Use:   "pagestore",
		Short: "Run a standalone page store (for pagestore.address of serve)",
		Long: `Run a standalone page store: it keeps the pages of every branch of the
neonproxy serve nodes that name it in pagestore.address, in <data_dir>/pagestore
(pebble), and serves its HTTP API (HTTP/1.1 and h2c) on pagestore.listen (default
127.0.0.1:7100). A compute node materializes a branch's data directory from it as
one streamed response and ingests a stopped compute's changed pages as one
streamed request; timelines are created and dropped through it, so any node can
start any branch. It runs the garbage collection on pagestore.gc_interval and keeps
the images of walkeeper.retention. Same as serve with roles: [pagestore].
SIGINT/SIGTERM stop it.`,
	}, runPagestore)
}

// runPagestore runs the pagestore role until ctx ends.
func runPagestore(ctx context.Context, out io.Writer, cfg config.Config, log *zap.Logger) error {
	dir, err := filepath.Abs(filepath.Join(cfg.DataDir, "pagestore"))
	if err != nil {
		return err
	}
	s, err := pagestore.Open(pagestore.Options{Dir: dir, Logger: log.Named("pagestore"), Retention: cfg.Walkeeper.Retention.D(),
		CacheBytes: int64(cfg.Pagestore.BlockCacheBytes)})
	if err != nil {
		return err
	}
	defer func() { _ = s.Close() }()
	go pagestore.RunGC(ctx, s, cfg.Pagestore.GCInterval.D(), log.Named("gc"))
	return serveAPI(ctx, out, log, apiService{name: "pagestore", listen: cfg.Pagestore.Listen,
		token: cfg.Pagestore.Token, handler: pagestore.Handler(s, log.Named("http"), cfg.Pagestore.Token), dir: dir})
}

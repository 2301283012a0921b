package cli

import (
	"context"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/walkeeper"
)

func walkeeperCmd(g *globals) *cobra.Command {
	return roleCmd(g, &cobra.Command{
		Use:   "walkeeper",
		Short: "Run a standalone WAL keeper (for walkeeper.peers of serve)",
		Long: `Run a standalone WAL keeper: it stores the WAL of the computes of every
neonproxy serve that lists it in walkeeper.peers, in <data_dir>/walkeeper (pebble),
and serves its HTTP API on walkeeper.listen (default 127.0.0.1:7000). serve asks it to
stream each running compute's WAL as a synchronous standby, reads the WAL back
to recover a branch, and copies WAL between namespaces for new branches.

Three keepers with different data_dir and walkeeper.listen, and serve with
walkeeper.peers listing them and walkeeper.quorum: 2, survive the loss of any one.
The keeper reaches computes at the connection strings serve gives it: their unix
sockets on the same machine, or with walkeeper.via_front_door the front door of the
node that runs them (TLS, walkeeper.token as its password). Same as serve with
roles: [walkeeper]. SIGINT/SIGTERM stop it.`,
	}, runWalkeeper)
}

// runWalkeeper runs the walkeeper role until ctx ends.
func runWalkeeper(ctx context.Context, out io.Writer, cfg config.Config, log *zap.Logger) error {
	dir, err := filepath.Abs(filepath.Join(cfg.DataDir, "walkeeper"))
	if err != nil {
		return err
	}
	k, err := walkeeper.Open(walkeeper.Options{Dir: dir, Logger: log.Named("walkeeper"), Password: cfg.Walkeeper.Token})
	if err != nil {
		return err
	}
	defer func() { _ = k.Close() }()
	return serveAPI(ctx, out, log, apiService{name: "walkeeper", listen: cfg.Walkeeper.Listen,
		token: cfg.Walkeeper.Token, handler: walkeeper.Handler(k, log.Named("http"), cfg.Walkeeper.Token), dir: dir})
}

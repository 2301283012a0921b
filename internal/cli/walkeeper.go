package cli

import (
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/neonproxy/neonproxy/walkeeper"
)

func walkeeperCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "walkeeper",
		Short: "Run a standalone WAL keeper (for walkeeper.peers of serve)",
		Long: `Run a standalone WAL keeper: it stores the WAL of the computes of every
neonproxy serve that lists it in walkeeper.peers, in <data_dir>/walkeeper (pebble),
and serves its HTTP API on walkeeper.listen (default 127.0.0.1:7000). serve asks it to
stream each running compute's WAL as a synchronous standby, reads the WAL back
to recover a branch, and copies WAL between namespaces for new branches.

Three keepers with different data_dir and walkeeper.listen, and serve with
walkeeper.peers listing them and walkeeper.quorum: 2, survive the loss of any one.
The keeper reaches computes at the connection strings serve gives it (unix
sockets on the same machine). SIGINT/SIGTERM stop it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, ctx, done, err := g.daemon()
			if err != nil {
				return err
			}
			defer done()
			dir, err := filepath.Abs(filepath.Join(cfg.DataDir, "walkeeper"))
			if err != nil {
				return err
			}
			k, err := walkeeper.Open(walkeeper.Options{Dir: dir, Logger: log.Named("walkeeper"), Password: cfg.Walkeeper.Token})
			if err != nil {
				return err
			}
			defer func() { _ = k.Close() }()
			return serveAPI(ctx, cmd.OutOrStdout(), log, apiService{name: "walkeeper", listen: cfg.Walkeeper.Listen,
				token: cfg.Walkeeper.Token, handler: walkeeper.Handler(k, log.Named("http"), cfg.Walkeeper.Token), dir: dir})
		},
	}
}

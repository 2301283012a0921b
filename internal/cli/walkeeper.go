package cli

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

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
			k, err := walkeeper.Open(walkeeper.Options{Dir: dir, Logger: log.Named("walkeeper")})
			if err != nil {
				return err
			}
			defer func() { _ = k.Close() }()
			if err := checkKeeperListen(cfg.Walkeeper.Listen, cfg.Walkeeper.Token); err != nil {
				return err
			}
			ln, err := net.Listen("tcp", cfg.Walkeeper.Listen)
			if err != nil {
				return fmt.Errorf("walkeeper.listen: %w", err)
			}
			srv := &http.Server{Handler: walkeeper.Handler(k, log.Named("http"), cfg.Walkeeper.Token), ReadHeaderTimeout: 10 * time.Second}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(ln) }()
			fmt.Fprintf(cmd.OutOrStdout(), "walkeeper is ready: http://%s (data in %s)\n", ln.Addr(), dir)
			log.Info("walkeeper serving", zap.Stringer("addr", ln.Addr()), zap.String("dir", dir))
			select {
			case <-ctx.Done():
				log.Info("walkeeper shutting down")
			case err := <-served:
				return fmt.Errorf("walkeeper: serve: %w", err)
			}
			// Streams are long requests: closing their connections ends
			// them (the computes' commits then wait for the other keepers).
			if err := srv.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
}

// checkKeeperListen refuses to serve the keeper's API beyond loopback
// without a token: it streams any compute a caller names and hands out WAL.
func checkKeeperListen(listen, token string) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("walkeeper.listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) || token != "" {
		return nil
	}
	return fmt.Errorf("walkeeper.listen %s is not a loopback address: set walkeeper.token (serve's walkeeper.token must match) or listen on 127.0.0.1", listen)
}

// Package cli is neonproxy's command line (cobra): `serve` runs the front
// door, compute manager and admin API; the other subcommands call the admin
// API of a running server. cmd/neonproxy only executes Root.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/internal/server"
)

type globals struct {
	configPath string
	adminAddr  string
}

// Root returns the neonproxy command tree.
func Root() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "neonproxy",
		Short: "Serverless PostgreSQL: a front door that routes to branches and wakes their computes",
		Long: `neonproxy accepts ordinary PostgreSQL connections, routes each to a branch
(TLS SNI BRANCH.<tls.sni_suffix>, options=endpoint=BRANCH, or database BRANCH.DB),
starts that branch's PostgreSQL 15 compute if it is asleep while holding the client,
and steps unused computes down (frozen after compute.idle_after, stopped after
compute.suspend_timeout, local copy dropped after compute.offload_after).

Configuration: --config FILE (YAML, see config.yaml); every key can be overridden by
NEONPROXY_<KEY> with dots as underscores, e.g. NEONPROXY_COMPUTE_SUSPEND_TIMEOUT=5s.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.configPath, "config", "config.yaml", "configuration file (YAML); missing file = built-in defaults")
	root.PersistentFlags().StringVar(&g.adminAddr, "admin", "", "admin API address for client commands (default: admin_listen from the configuration)")
	root.AddCommand(serveCmd(g), walkeeperCmd(g), pagestoreCmd(g), branchCmd(g), computeCmd(g), usageCmd(g))
	return root
}

// reloadPath is the file the admin console's RELOAD re-reads: --config,
// unless it is the optional default file and that is missing.
func (g *globals) reloadPath() string {
	if _, err := os.Stat(g.configPath); errors.Is(err, os.ErrNotExist) && g.configPath == "config.yaml" {
		return ""
	}
	return g.configPath
}

func loadConfig(path string) (config.Config, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && path == "config.yaml" {
		path = "" // the default file name is optional
	}
	return config.Load(path, os.Environ())
}

// daemon loads the configuration and the logger of a long-running command
// and returns a context that ends on SIGINT/SIGTERM; done releases them.
func (g *globals) daemon() (config.Config, *zap.Logger, context.Context, func(), error) {
	cfg, err := loadConfig(g.configPath)
	if err != nil {
		return cfg, nil, nil, nil, err
	}
	log, err := newLogger(cfg.Log)
	if err != nil {
		return cfg, nil, nil, nil, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	return cfg, log, ctx, func() { stop(); _ = log.Sync() }, nil
}

func newLogger(c config.Log) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	zc := zap.NewProductionConfig()
	if c.Format == "console" {
		zc = zap.NewDevelopmentConfig()
		zc.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil
	zc.EncoderConfig.TimeKey = "ts"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.EncoderConfig.EncodeDuration = zapcore.StringDurationEncoder
	return zc.Build()
}

func serveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the front door, the compute manager and the admin API",
		Long: `Run neonproxy. At first start it creates the branch "main" (initdb) with the
superuser "postgres"; its password is bootstrap.password, or generated and kept in
<data_dir>/credentials. The ready-to-paste connection string is printed on stdout.
SIGINT/SIGTERM stop every compute cleanly before exiting. SIGHUP re-reads the TLS
certificate files and applies the reloadable keys of the configuration (pool sizes and
timeouts, admin users), as the admin console's RELOAD does.

roles: (config) says what the process runs: proxy and compute (the front door
and the computes), pagestore, walkeeper. Empty: proxy, compute, and the pagestore
and a keeper unless pagestore.address / walkeeper.peers name standalone ones. A
process without proxy and compute runs only the storage roles it lists, as
neonproxy pagestore / neonproxy walkeeper do.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, ctx, done, err := g.daemon()
			if err != nil {
				return err
			}
			defer done()
			if !cfg.HasRole(config.RoleProxy) {
				return runStorageRoles(ctx, cmd.OutOrStdout(), cfg, log)
			}
			srv, err := server.New(ctx, cfg, log, server.Options{ConfigPath: g.reloadPath()})
			if err != nil {
				return err
			}
			if err := srv.Start(); err != nil {
				_ = srv.Close(context.Background())
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "neonproxy is ready. Connect with:\n\n  psql '%s'\n\n", srv.ConnString())
			if srv.Password() == "" {
				fmt.Fprintln(cmd.OutOrStdout(), "(the superuser password was set through bootstrap.password at first start)")
			}
			// SIGHUP: what RELOAD does (the TLS certificate files, the
			// reloadable keys), without dropping a connection.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			var serveErr error
		wait:
			for {
				select {
				case <-ctx.Done():
					log.Info("shutting down: stopping computes")
					break wait
				case serveErr = <-srv.Errors():
					log.Error("listener failed; shutting down", zap.Error(serveErr))
					break wait
				case <-hup:
					if notice, err := srv.Reload(); err != nil {
						log.Error("SIGHUP: reload failed; the running configuration stays", zap.Error(err))
					} else {
						log.Info("SIGHUP: reloaded", zap.String("changes", notice))
					}
				}
			}
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			return errors.Join(serveErr, srv.Close(shutdownCtx))
		},
	}
}

func (g *globals) client() (*admin.Client, error) {
	cfg, err := loadConfig(g.configPath)
	if err != nil && g.adminAddr == "" {
		return nil, err
	}
	addr := g.adminAddr
	if addr == "" {
		addr = cfg.AdminListen
	}
	// admin.token (also NEONPROXY_ADMIN_TOKEN) when there is a config.
	return &admin.Client{BaseURL: addr, Token: cfg.Admin.Token}, nil
}

func branchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "branch", Short: "Create, list, show and delete branches (calls the admin API)"}
	var parent, lsn, at, ttl, expiresAt string
	var asJSON, expireCascade bool
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a branch from its parent's latest durable state (a stored image plus the WAL keeper's WAL since)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			b, err := c.Create(cmd.Context(), admin.CreateBranchRequest{Name: args[0], Parent: parent, LSN: lsn, At: at,
				TTL: ttl, ExpiresAt: expiresAt, ExpireCascade: expireCascade})
			if err != nil {
				return err
			}
			return printBranch(cmd, b, asJSON)
		},
	}
	create.Flags().StringVar(&parent, "parent", "", "parent branch (default: the default branch, main)")
	create.Flags().StringVar(&lsn, "lsn", "", "branch at this LSN of the parent's history, e.g. from SELECT pg_current_wal_lsn() (rows committed before it are in the branch)")
	create.Flags().StringVar(&at, "at", "", "branch at this RFC 3339 time of the parent's history (rows committed at or before it are in the branch)")
	create.Flags().StringVar(&ttl, "ttl", "", "delete the branch this long after its creation, e.g. 90m, 24h, 7d (its clients are told it expired)")
	create.Flags().StringVar(&expiresAt, "expires-at", "", "delete the branch at this RFC 3339 time")
	create.Flags().BoolVar(&expireCascade, "expire-cascade", false, "when it expires, delete its descendants with it (default: it waits until they are gone)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List branches as a tree, with their compute state and storage",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			bs, err := c.ListBranches(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd, bs)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "BRANCH\tPARENT LSN\tCOMPUTE\tCLIENTS\tLOGICAL\tUNIQUE\tCREATED\tEXPIRES")
			for _, r := range branchTree(bs) {
				b := r.b
				expires := "-"
				if b.ExpiresAt != nil {
					expires = b.ExpiresAt.Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.prefix, b.Name, dash(b.ParentLSN), b.Compute.State,
					b.Compute.Clients, humanize.IBytes(uint64(max(b.LogicalSizeBytes, 0))),
					humanize.IBytes(uint64(max(b.UniqueBytes, 0))), b.CreatedAt.Format(time.RFC3339), expires)
			}
			return w.Flush()
		},
	}
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one branch as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			b, err := c.GetBranch(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return writeJSON(cmd, b)
		},
	}
	var cascade bool
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Stop a branch's compute and delete the branch and its data (refused while it has child branches unless --cascade)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteBranchTree(cmd.Context(), args[0], cascade); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted branch %s\n", args[0])
			return nil
		},
	}
	del.Flags().BoolVar(&cascade, "cascade", false, "also delete the branch's descendants (children first)")
	for _, c := range []*cobra.Command{create, list} {
		c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	}
	cmd.AddCommand(create, list, show, del, branchSetCmd(g), branchResetCmd(g), branchDiffCmd(g))
	return cmd
}

// branchDiffCmd prints what a branch changed (GET /v1/branches/NAME/diff).
func branchDiffCmd(g *globals) *cobra.Command {
	var o admin.DiffOptions
	var asJSON bool
	diff := &cobra.Command{
		Use:   "diff NAME",
		Short: "Show what a branch and its parent (or --against OTHER) changed since they diverged",
		Long: `List the relations whose pages changed in the branch or in the other branch since
the newest state they share, with changed-page counts, read from the page store's
own metadata: no compute starts. With --schema, also the DDL differences (tables,
columns, indexes, constraints, functions, ...) of --database, read from both
branches' catalogs (this wakes their computes). Changes a running compute made
since its last stop are not in the store yet: the output says so.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			d, err := c.DiffBranch(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd, d)
			}
			return printDiff(cmd, d)
		},
	}
	diff.Flags().StringVar(&o.Against, "against", "", "branch to compare with (default: the parent)")
	diff.Flags().BoolVar(&o.Schema, "schema", false, "also list DDL differences (wakes both computes)")
	diff.Flags().StringVar(&o.Database, "database", "", "database for --schema (default postgres)")
	diff.Flags().BoolVar(&o.System, "system", false, "also list system catalogs")
	diff.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return diff
}

func printDiff(cmd *cobra.Command, d admin.DiffJSON) error {
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "%s (image %s) against %s (image %s); they share %s up to %s\n",
		d.Branch, d.BranchLSN, d.Against, d.AgainstLSN, dash(d.Ancestor), d.AncestorLSN)
	for _, b := range d.UnstoredChanges {
		fmt.Fprintf(out, "note: the compute of %s has changes not stored yet; `neonproxy compute suspend %s` first for an exact diff\n", b, b)
	}
	if len(d.Relations) == 0 {
		fmt.Fprintln(out, "no relation changed")
	} else {
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintf(w, "DATABASE\tRELATION\tKIND\tOF\tPAGES %s\tPAGES %s\tNOTE\n", d.Branch, d.Against)
		for _, r := range d.Relations {
			var note []string
			if r.Created != "" {
				note = append(note, "created in "+side(d, r.Created))
			}
			if r.Dropped != "" {
				note = append(note, "dropped in "+side(d, r.Dropped))
			}
			name := r.Name
			if name == "" {
				name = fmt.Sprintf("(relfilenode %d)", r.Relfilenode)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", r.Database, name, dash(r.Kind), dash(r.Of), r.PagesBranch, r.PagesAgainst, strings.Join(note, ", "))
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if d.Schema != nil {
		fmt.Fprintf(out, "\nschema changes in %s relative to %s:\n", d.Branch, d.Against)
		if len(d.Schema) == 0 {
			fmt.Fprintln(out, "  none")
		}
		for _, c := range d.Schema {
			fmt.Fprintf(out, "  %s\n", c.Text)
		}
	}
	return nil
}

// side names a diff side ("branch", "against", "both") by branch name.
func side(d admin.DiffJSON, s string) string {
	switch s {
	case "branch":
		return d.Branch
	case "against":
		return d.Against
	}
	return "both"
}

// branchResetCmd resets a branch to its parent's latest state.
func branchResetCmd(g *globals) *cobra.Command {
	var wait bool
	var timeout time.Duration
	reset := &cobra.Command{
		Use:   "reset NAME",
		Short: "Make a branch read its parent's latest durable state again (its own changes are discarded)",
		Long: `Reset a branch to its parent's latest durable state in O(1): the branch gets a new
timeline under the same name; the old one is dropped once no branch reads from it.
Its connected clients are disconnected with a message that says the branch was reset,
or, with --wait, the reset waits until they have left (up to --timeout).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			b, err := c.ResetBranch(cmd.Context(), args[0], wait, timeout)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "reset branch %s to the latest state of %s (parent LSN %s)\n", b.Name, b.Parent, dash(b.ParentLSN))
			return nil
		},
	}
	reset.Flags().BoolVar(&wait, "wait", false, "wait until the branch's clients have left instead of disconnecting them")
	reset.Flags().DurationVar(&timeout, "timeout", 0, "with --wait, give up after this long (default 5m)")
	return reset
}

// branchSetCmd changes a branch's settings (PATCH /v1/branches/NAME).
func branchSetCmd(g *globals) *cobra.Command {
	var ips []string
	var maxConn int
	var ttl, expiresAt string
	var expireCascade bool
	set := &cobra.Command{
		Use:   "set NAME",
		Short: "Change a branch's settings: the client addresses allowed in, its connection limit",
		Long: `Change a branch's settings in the registry; every node's front door applies them
to new connections at once.

  --allowed-ips 203.0.113.7,10.0.0.0/8   only these client addresses (CIDRs or single
                                         addresses) may connect, checked before
                                         authentication; --allowed-ips "" allows any again
  --max-client-conn 50                   at most 50 client connections to the branch on
                                         each node (53300 beyond); 0: pool.max_branch_client_conn
  --ttl 24h | --expires-at RFC3339       a new expiry (from now, or at a time); "" clears it
  --expire-cascade                       when it expires, delete its descendants with it`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req admin.BranchSettings
			if cmd.Flags().Changed("allowed-ips") {
				list := []string{}
				for _, ip := range ips {
					if ip = strings.TrimSpace(ip); ip != "" {
						list = append(list, ip)
					}
				}
				req.AllowedIPs = &list
			}
			if cmd.Flags().Changed("max-client-conn") {
				req.MaxClientConn = &maxConn
			}
			if cmd.Flags().Changed("ttl") {
				req.TTL = &ttl
			}
			if cmd.Flags().Changed("expires-at") {
				req.ExpiresAt = &expiresAt
			}
			if cmd.Flags().Changed("expire-cascade") {
				req.ExpireCascade = &expireCascade
			}
			if req == (admin.BranchSettings{}) {
				return errors.New("nothing to set: give --allowed-ips, --max-client-conn, --ttl, --expires-at or --expire-cascade")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			b, err := c.UpdateBranch(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return writeJSON(cmd, b)
		},
	}
	set.Flags().StringSliceVar(&ips, "allowed-ips", nil, `client addresses allowed in, comma-separated CIDRs or addresses ("": any)`)
	set.Flags().IntVar(&maxConn, "max-client-conn", 0, "client connections to the branch per node (0: pool.max_branch_client_conn)")
	set.Flags().StringVar(&ttl, "ttl", "", `expire this long from now, e.g. 24h or 7d ("": never)`)
	set.Flags().StringVar(&expiresAt, "expires-at", "", `expire at this RFC 3339 time ("": never)`)
	set.Flags().BoolVar(&expireCascade, "expire-cascade", false, "when it expires, delete its descendants with it")
	return set
}

// usageCmd prints every branch's usage over a window (GET /v1/usage).
func usageCmd(g *globals) *cobra.Command {
	var from, to string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Show each branch's compute seconds by tier, wakes and storage over a window (calls the admin API)",
		Long: `Show what each branch used over a window (default: this calendar month, UTC, up to
now): compute seconds running and idle, wakes (cold, warm, hot), and its storage now.
Deleted branches are listed too. Compute usage is kept per hour, so the hours that
overlap the window are summed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var f, t time.Time
			for _, p := range []struct {
				flag string
				s    string
				dst  *time.Time
			}{{"from", from, &f}, {"to", to, &t}} {
				if p.s == "" {
					continue
				}
				v, err := time.Parse(time.RFC3339, p.s)
				if err != nil {
					return fmt.Errorf("--%s %q: want an RFC 3339 time, e.g. 2026-12-01T00:00:00Z", p.flag, p.s)
				}
				*p.dst = v
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			rep, err := c.Usage(cmd.Context(), f, t)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd, rep)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "usage from %s to %s\n", rep.From.Format(time.RFC3339), rep.To.Format(time.RFC3339))
			fmt.Fprintln(w, "BRANCH\tCOMPUTE S\tRUNNING S\tIDLE S\tWAKES (COLD/WARM/HOT)\tUNIQUE\tLOGICAL")
			line := func(name string, u admin.UsageJSON) {
				fmt.Fprintf(w, "%s\t%.1f\t%.1f\t%.1f\t%d (%d/%d/%d)\t%s\t%s\n", name, u.ComputeSeconds, u.RunningSeconds, u.IdleSeconds,
					u.Wakes, u.ColdWakes, u.WarmWakes, u.HotWakes, humanize.IBytes(uint64(max(u.UniqueBytes, 0))),
					humanize.IBytes(uint64(max(u.LogicalSizeBytes, 0))))
			}
			for _, b := range rep.Branches {
				name := b.Branch
				if b.Deleted {
					name += " (deleted)"
				}
				line(name, b.UsageJSON)
			}
			line("TOTAL", rep.Total)
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "start of the window, RFC 3339 (default: the first of this month, UTC)")
	cmd.Flags().StringVar(&to, "to", "", "end of the window, RFC 3339 (default: now)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func computeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "compute", Short: "Control branch computes (calls the admin API)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "suspend BRANCH",
		Short: "Stop a branch's compute now (fast shutdown); the next client wakes it again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			b, err := c.Suspend(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "branch %s: compute %s\n", b.Name, b.Compute.State)
			return nil
		},
	})
	return cmd
}

func printBranch(cmd *cobra.Command, b admin.BranchJSON, asJSON bool) error {
	if asJSON {
		return writeJSON(cmd, b)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "created branch %s (parent %s at %s)\n", b.Name, dash(b.Parent), dash(b.ParentLSN))
	return nil
}

// treeRow is one line of the branch tree: the branch and the drawing
// before its name.
type treeRow struct {
	prefix string
	b      admin.BranchJSON
}

// branchTree orders branches depth-first under their parents (siblings by
// name), with box-drawing prefixes. A branch whose parent is not listed is
// shown as a root.
func branchTree(bs []admin.BranchJSON) []treeRow {
	byName := make(map[string]bool, len(bs))
	for _, b := range bs {
		byName[b.Name] = true
	}
	children := map[string][]admin.BranchJSON{}
	var roots []admin.BranchJSON
	for _, b := range bs {
		if b.Parent == "" || !byName[b.Parent] || b.Parent == b.Name {
			roots = append(roots, b)
		} else {
			children[b.Parent] = append(children[b.Parent], b)
		}
	}
	byNameOrder := func(list []admin.BranchJSON) {
		sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	}
	byNameOrder(roots)
	var rows []treeRow
	seen := map[string]bool{}
	var walk func(b admin.BranchJSON, prefix, childPrefix string)
	walk = func(b admin.BranchJSON, prefix, childPrefix string) {
		if seen[b.Name] {
			return // each branch once, even on a cycle
		}
		seen[b.Name] = true
		rows = append(rows, treeRow{prefix: prefix, b: b})
		kids := children[b.Name]
		byNameOrder(kids)
		for i, k := range kids {
			if i == len(kids)-1 {
				walk(k, childPrefix+"└── ", childPrefix+"    ")
			} else {
				walk(k, childPrefix+"├── ", childPrefix+"│   ")
			}
		}
	}
	for _, r := range roots {
		walk(r, "", "")
	}
	// Branches on a parent cycle (a corrupt registry) have no root above
	// them: list them too rather than hide them.
	rest := append([]admin.BranchJSON(nil), bs...)
	byNameOrder(rest)
	for _, b := range rest {
		walk(b, "", "")
	}
	return rows
}

func writeJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

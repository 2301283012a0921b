package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// tiersReport is the tiers section's results.
type tiersReport struct {
	admin                                   string // the section's admin API, for the printed requests
	port                                    int
	config                                  string // the generated neonproxy.yaml
	scale, tries                            int
	idleAfter, suspendTimeout, offloadAfter time.Duration
	logical, local                          int64 // main's logical_size_bytes and local_bytes after the load
	rows                                    []tierRow
	suspend                                 stats // POST …/suspend round trips of the warm and cold tries
	// The pooled client: connections opened (1: it survived every tier),
	// queries that succeeded and failed.
	pooledConnects, pooledQueries, pooledErrors int
	// From neonproxy's log, main's starts during the tries: "compute
	// started" took, for warm and cold ones, and the "data directory
	// materialized" lines (took, median MB/s and bytes).
	warmStarts, coldStarts, materialize stats
	afterMaterialize                    stats // each cold start's took − its materialization's took
	materializeMBps                     float64
	materializeBytes                    int64
	prewarms                            int // "pre-warm" lines for main during the tries (want 0)
	commands                            []string
}

func (r *tiersReport) command(c string) {
	if c != "" {
		r.commands = append(r.commands, c)
	}
}

// tierRow is one tier on one path.
type tierRow struct {
	kase tierCase
	path string
	s    stats
	// seen counts compute.tier in the JSON before each try; kinds the wake
	// kinds the metric counted during each (kindDiff); tierSeconds is the
	// JSON's tier_seconds before each.
	seen, kinds map[string]int
	tierSeconds []float64
	// localAtZero counts tries at zero whose JSON still had local_bytes.
	localAtZero int
	// mislabeled counts tries whose counted kind was not the tier's
	// (mislabel: the first of them).
	mislabeled int
	mislabel   string
	failed     int
	firstErr   string
}

func (r *report) printTiers(p printer) {
	t := r.tiers
	if t.admin == "" {
		return
	}
	p("")
	p("## Tiers (issue 7): resume latency to first row, per tier")
	p("")
	p("A separate neonproxy (own data dir and store, log.level info) with `compute.idle_after: %s`,", shortDuration(t.idleAfter))
	p("`compute.suspend_timeout: %s` (so main suspends only on `POST …/suspend`), `compute.offload_after: %s` and", shortDuration(t.suspendTimeout), shortDuration(t.offloadAfter))
	p("`compute.prewarm: false` (a predicted arrival would be woken for before the try).")
	if t.logical > 0 {
		p("main loaded with `pgbench -i -s %d` through neonproxy and suspended: **logical_size_bytes %s** (local_bytes %s).",
			t.scale, mbytes(t.logical), mbytes(t.local))
	}
	p("%d rounds; each uses both paths once on the running compute (not timed: the first new connection and the first", t.tries)
	p("pooled transaction of a compute's life each start a backend for neonproxy — its verifier-lookup connection, a")
	p("pool server connection — which is not the thaw), then brings main to each tier in turn, confirmed by")
	p("`compute.tier` in the branch JSON just before")
	p("the try: **hot** (`idle`: frozen), **running** (right after the hot wake, on the thawed compute: the baseline),")
	p("**warm** (`POST …/suspend`, then `suspended`, tried before the offload), **cold** (`POST …/suspend`, then")
	p("`zero`: local data directory dropped). At each tier both paths are timed, main brought down again before the")
	p("second; the paths swap order every round. The query is `%s` (simple protocol).", tiersQuery)
	p("")
	p("| tier (wake) | goal | new connection: median | new connection: p99 | pooled client: median | pooled client: p99 |")
	p("|---|---|---:|---:|---:|---:|")
	for _, c := range tierCases {
		cells := []string{}
		for _, path := range tierPaths {
			row, ok := t.row(c.name, path)
			if !ok || row.s.n == 0 {
				cells = append(cells, "–", "–")
				continue
			}
			cells = append(cells, tierGoalCell(row.s.median, c.goal), tierGoalCell(row.s.p99, c.goal))
		}
		p("| %s (%s) | %s | %s |", c.name, c.tier, tierGoalText(c.goal), strings.Join(cells, " | "))
	}
	p("")
	p("Goals are issue 7's, printed for information; nothing here is pass/fail. The running row is no tier")
	p("of issue 7: what the same client pays when nothing needs waking (hot − running is the thaw). p99 over")
	p("%d tries is the largest sample or close to it (nearest rank); every try is in `<tmp>/tiers/%s` (`-keep`).", t.tries, tiersCSV)
	r.printTierPath(p, tierPathNew, "### New connection: pgx connect (TCP, SCRAM) to database `main` + the query → first row (close not timed)")
	r.printTierPath(p, tierPathPooled, "### Pooled client: one pgx connection to `main-pooler`, opened before the tries; the query → first row")
	r.printTierNotes(p)
	cmds := slices.Clone(t.commands)
	if t.config != "" {
		cmds = append(cmds, "", "# "+tiersConfigName+" (generated)")
		cmds = append(cmds, strings.Split(strings.TrimRight(t.config, "\n"), "\n")...)
	}
	printCommands(p, "tiers", cmds...)
}

const tiersConfigName = "<tmp>/tiers/neonproxy.yaml"

func (t tiersReport) row(name, path string) (tierRow, bool) {
	for _, row := range t.rows {
		if row.kase.name == name && row.path == path {
			return row, true
		}
	}
	return tierRow{}, false
}

func tierGoalText(goal time.Duration) string {
	if goal == 0 {
		return "–"
	}
	return "≤ " + ms(goal)
}

// tierGoalCell is a duration and, with a goal, whether it meets it.
func tierGoalCell(d, goal time.Duration) string {
	if goal == 0 {
		return ms(d)
	}
	if d <= goal {
		return ms(d) + " (met)"
	}
	return ms(d) + " (**not met**)"
}

func (r *report) printTierPath(p printer, path, title string) {
	t := r.tiers
	p("")
	p("%s", title)
	p("")
	p("| tier (wake) | n | median | p90 | p99 | min | max | goal | JSON tier before (median tier_seconds) | wake kind counted | failed |")
	p("|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|")
	for _, c := range tierCases {
		row, ok := t.row(c.name, path)
		if !ok {
			continue
		}
		s := row.s
		kinds := countsText(row.kinds)
		if row.mislabeled > 0 {
			kinds = "**" + kinds + "**"
		}
		if s.n == 0 {
			p("| %s | 0 | – | – | – | – | – | %s | – | – | %d |", c.name, tierGoalText(c.goal), row.failed)
			continue
		}
		p("| %s | %d | %s | %s | %s | %s | %s | %s | %s (%.3f s) | %s | %d |", c.name, s.n, ms(s.median), ms(s.p90), ms(s.p99),
			ms(s.min), ms(s.max), tierGoalText(c.goal), countsText(row.seen), medianFloat(row.tierSeconds), kinds, row.failed)
	}
}

// countsText lists counts by label, largest first: "idle ×20, zero ×1".
func countsText(m map[string]int) string {
	if len(m) == 0 {
		return "–"
	}
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func (r *report) printTierNotes(p printer) {
	t := r.tiers
	p("")
	for _, row := range t.rows {
		if row.mislabeled > 0 {
			p("- **%s, %s: %d try(ies) counted another wake kind than %s** (`%s`); the first: %s.",
				row.kase.name, row.path, row.mislabeled, row.kase.wantKind(row.path), wakeCountMetric, row.mislabel)
		}
		if row.localAtZero > 0 {
			p("- **%s, %s: %d try(ies) at tier zero had local_bytes > 0 in the branch JSON.**", row.kase.name, row.path, row.localAtZero)
		}
	}
	if t.prewarms > 0 {
		p("- **neonproxy's log has %d \"pre-warm\" line(s) for main during the tries** (compute.prewarm is false): a try may have found main woken ahead of it.", t.prewarms)
	}
	switch {
	case t.pooledConnects == 1 && t.pooledErrors == 0:
		p("- The pooled client stayed on one connection through every tier: %d queries, none failed.", t.pooledQueries)
	case t.pooledConnects > 0:
		p("- **The pooled client did not survive every tier**: %d connection(s), %d failed queries, %d succeeded.",
			t.pooledConnects, t.pooledErrors, t.pooledQueries)
	}
	p("- Wake kind counted: the change of `%s` by kind around each try (`none`: no wake", wakeCountMetric)
	p("  observed — a pooled client's transaction on a running compute is not; a new connection's is, as `running`).")
	if t.suspend.n > 0 {
		p("- `POST …/suspend` round trip before the warm and cold tries (not timed in them): median %s, p99 %s, max %s (n %d).",
			ms(t.suspend.median), ms(t.suspend.p99), ms(t.suspend.max), t.suspend.n)
	}
	if t.warmStarts.n > 0 || t.coldStarts.n > 0 {
		line := "- neonproxy's log, main's starts during the tries (\"compute started\" took):"
		if t.warmStarts.n > 0 {
			line += fmt.Sprintf(" warm median %s (n %d, max %s);", ms(t.warmStarts.median), t.warmStarts.n, ms(t.warmStarts.max))
		}
		if t.coldStarts.n > 0 {
			line += fmt.Sprintf(" cold median %s (n %d, max %s);", ms(t.coldStarts.median), t.coldStarts.n, ms(t.coldStarts.max))
		}
		p("%s", strings.TrimSuffix(line, ";")+".")
	}
	if t.materialize.n > 0 {
		line := fmt.Sprintf("- Materializations (\"data directory materialized\"): median took %s, %.0f MB/s, %s (n %d)",
			ms(t.materialize.median), t.materializeMBps, mbytes(t.materializeBytes), t.materialize.n)
		if a := t.afterMaterialize; a.n > 0 {
			line += fmt.Sprintf("; the rest of each cold start (its took − the materialization's): median %s, max %s", ms(a.median), ms(a.max))
		}
		p("%s.", line)
	}
}

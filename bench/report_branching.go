package main

import (
	"fmt"
	"slices"
	"time"
)

// Issue 4's goals, printed for information.
const (
	createGoal       = 5 * time.Millisecond
	createRatioGoal  = 1.5 // big parent / small parent, median create
	storageRatioGoal = 1.3 // store size / parent logical size
	coldGoal         = 500 * time.Millisecond
	warmGoal         = 150 * time.Millisecond
)

// branchingReport is the branching section's results.
type branchingReport struct {
	admin         string // the section's admin API, for the printed requests
	port          int
	storeStart    storeSize // main only
	createParents []createParent
	storage       storageReport
	start         startReport
	commands      []string
}

func (r *branchingReport) command(c string) {
	if c != "" {
		r.commands = append(r.commands, c)
	}
}

type createParent struct {
	name    string
	scale   int
	logical int64
	create  stats
}

type storeSize struct{ metric, du int64 }

type storageReport struct {
	scale                       int
	parentLogical, parentUnique int64
	before, after               storeSize
	branches                    []storageBranch
}

type storageBranch struct {
	name            string
	lo, hi          int
	unique, logical int64
}

type startReport struct {
	scale            int
	logical          int64 // of the parent: what a fresh branch reads
	freshLogical     int64 // logical_size_bytes a fresh branch reports
	cold, warm       stats
	suspend          stats
	warmBranch       string
	warmWithoutLocal int // warm tries that found no local copy
	materialized     []materialization
}

func (r *report) printBranching(p printer) {
	br := r.branching
	if br.admin == "" {
		return
	}
	p("")
	p("## Branching (issue 4): create, storage, cold and warm start")
	p("")
	p("A separate neonproxy (own data dir and store, log.level info, same config otherwise); its store holds")
	p("main and this section's branches only. Parents are loaded with `pgbench -i` through neonproxy and")
	p("suspended (which stores their pages) before they are branched. MB = 10⁶ bytes.")
	p("")
	p("| measure | value | goal |")
	p("|---|---:|---|")
	for _, c := range br.createParents {
		if c.create.n > 0 {
			p("| 1. create from %s (scale %d, %s logical), median | %s | ≤ %s: %s |", c.name, c.scale, mbytes(c.logical),
				ms(c.create.median), ms(createGoal), metText(c.create.median <= createGoal))
		}
	}
	if len(br.createParents) == 2 && br.createParents[0].create.n > 0 && br.createParents[1].create.n > 0 {
		a, b := float64(br.createParents[1].create.median), float64(br.createParents[0].create.median)
		p("| 1. create median, big / small parent | %s | ≤ %.1f×: %s |", ratio(a, b), createRatioGoal, metText(a/b <= createRatioGoal))
	}
	st := br.storage
	if st.after.metric > 0 && st.parentLogical > 0 {
		x := float64(st.after.metric) / float64(st.parentLogical)
		p("| 2. store / parent logical size after %d branches (neonproxy_pagestore_bytes) | %.2f× | ≤ %.1f×: %s |",
			len(st.branches), x, storageRatioGoal, metText(x <= storageRatioGoal))
	}
	sr := br.start
	if sr.cold.n > 0 {
		p("| 3. cold start → first row (%s branch), median | %s | ≤ %s: %s |", mbytes(sr.logical), ms(sr.cold.median), ms(coldGoal), metText(sr.cold.median <= coldGoal))
	}
	if sr.warm.n > 0 {
		p("| 3. warm start → first row, median | %s | ≤ %s: %s |", ms(sr.warm.median), ms(warmGoal), metText(sr.warm.median <= warmGoal))
	}
	p("")
	p("Goals are issue 4's, printed for information; nothing here is pass/fail.")
	r.printBranchCreate(p)
	r.printBranchStorage(p)
	r.printBranchStart(p)
	printCommands(p, "branching", append(slices.Clone(br.commands),
		fmt.Sprintf("curl %s/metrics | grep '^neonproxy_pagestore_bytes '; du -s --block-size=1 <data_dir>/pagestore", br.admin))...)
}

func (r *report) printBranchCreate(p printer) {
	cs := r.branching.createParents
	if len(cs) == 0 {
		return
	}
	p("")
	p("### 1. Branch create: `POST /v1/branches` round trip, %d per parent, taking turns; each deleted after (not timed)", branchCreates)
	p("")
	statsHeader(p, "parent (pgbench scale, logical size)")
	for _, c := range cs {
		if c.create.n > 0 {
			statsRow(p, fmt.Sprintf("%s (-s %d, %s)", c.name, c.scale, mbytes(c.logical)), c.create)
		}
	}
}

func (r *report) printBranchStorage(p printer) {
	st := r.branching.storage
	if st.parentLogical == 0 {
		return
	}
	p("")
	p("### 2. Storage: parent `pgbench -i -s %d`, %d branches each updating its own 1%% of pgbench_accounts, then suspended", st.scale, storageBranches)
	p("")
	p("Parent storage-parent: logical %s, unique %s.", mbytes(st.parentLogical), mbytes(st.parentUnique))
	p("")
	p("| store | neonproxy_pagestore_bytes | du of pagestore | metric / parent logical | du / parent logical |")
	p("|---|---:|---:|---:|---:|")
	row := func(name string, s storeSize) {
		if s.metric == 0 && s.du == 0 {
			return
		}
		p("| %s | %s | %s | %s | %s |", name, mbytes(s.metric), mbytes(s.du),
			ratioOf(float64(s.metric), float64(st.parentLogical)), ratioOf(float64(s.du), float64(st.parentLogical)))
	}
	row("at start (main only)", r.branching.storeStart)
	row("parent loaded and suspended", st.before)
	row(fmt.Sprintf("after %d branches", len(st.branches)), st.after)
	start := r.branching.storeStart
	if st.before.metric > 0 && start.metric > 0 {
		p("| growth from storing the parent | %s | %s | %s | %s |", mbytes(st.before.metric-start.metric), mbytes(st.before.du-start.du),
			ratioOf(float64(st.before.metric-start.metric), float64(st.parentLogical)),
			ratioOf(float64(st.before.du-start.du), float64(st.parentLogical)))
	}
	if st.after.metric > 0 && st.before.metric > 0 {
		p("| growth from the branches | %s | %s | %s | %s |", mbytes(st.after.metric-st.before.metric), mbytes(st.after.du-st.before.du),
			ratioOf(float64(st.after.metric-st.before.metric), float64(st.parentLogical)),
			ratioOf(float64(st.after.du-st.before.du), float64(st.parentLogical)))
	}
	p("")
	p("The parent shares main's catalog pages, so the store at start is part of what it reads. unique_bytes")
	p("and logical sizes count page bytes; the store's disk is what pebble wrote (compressed, plus its WAL).")
	if len(st.branches) == 0 {
		return
	}
	p("")
	p("| branch | updated aid | unique_bytes | unique / parent logical | logical_size_bytes |")
	p("|---|---|---:|---:|---:|")
	var sum int64
	for _, b := range st.branches {
		sum += b.unique
		p("| %s | %d–%d | %s | %.2f%% | %s |", b.name, b.lo, b.hi, mbytes(b.unique),
			100*float64(b.unique)/float64(st.parentLogical), mbytes(b.logical))
	}
	p("| sum | | %s | %.2f%% | |", mbytes(sum), 100*float64(sum)/float64(st.parentLogical))
}

func (r *report) printBranchStart(p printer) {
	sr := r.branching.start
	if sr.cold.n == 0 {
		return
	}
	p("")
	p("### 3. Cold and warm start: pgx connect + `SELECT 1` through neonproxy (TCP, SCRAM), parent `pgbench -i -s %d`", sr.scale)
	p("")
	p("Cold: a fresh branch each try (never started, local_bytes 0: its data directory is materialized")
	p("from the store), suspended after and deleted at the end. Warm: the last of them, suspended before")
	p("each try (its local copy is current, PostgreSQL starts on it).")
	p("")
	statsHeader(p, "measure")
	statsRow(p, fmt.Sprintf("cold start (%s branch)", mbytes(sr.logical)), sr.cold)
	statsRow(p, "warm start ("+sr.warmBranch+")", sr.warm)
	if sr.suspend.n > 0 {
		statsRow(p, "suspend: POST …/suspend until stopped (not in warm)", sr.suspend)
	}
	p("")
	if sr.freshLogical != sr.logical {
		p("- a fresh branch reports logical_size_bytes %s, its parent %s; the parent's is used here.",
			mbytes(sr.freshLogical), mbytes(sr.logical))
	}
	if sr.warm.n > 0 && sr.cold.median > sr.warm.median {
		diff := sr.cold.median - sr.warm.median
		p("- materialization estimate: logical size / (cold − warm median) = %s / %s = %.0f MB/s",
			mbytes(sr.logical), ms(diff), float64(sr.logical)/mb/diff.Seconds())
	}
	// A branch's first materialization is its cold start; any later one
	// of the warm branch means a warm try was not warm.
	var cold []materialization
	seen := map[string]bool{}
	warmAgain := 0
	for _, m := range sr.materialized {
		switch {
		case !seen[m.Branch]:
			seen[m.Branch] = true
			cold = append(cold, m)
		case m.Branch == sr.warmBranch:
			warmAgain++
		}
	}
	if len(cold) > 0 {
		var rates []float64
		var took []time.Duration
		for _, m := range cold {
			rates = append(rates, m.MBps)
			if d, err := time.ParseDuration(m.Took); err == nil {
				took = append(took, d)
			}
		}
		line := fmt.Sprintf("- neonproxy's log: %d \"data directory materialized\" lines, median mb_per_s %.0f (min %.0f, max %.0f)",
			len(cold), medianFloat(rates), slices.Min(rates), slices.Max(rates))
		if len(took) > 0 {
			line += fmt.Sprintf(", median took %s", ms(medianDuration(took)))
		}
		var sizes []float64
		for _, m := range cold {
			sizes = append(sizes, float64(m.Bytes))
		}
		p("%s, median %s materialized.", line, mbytes(int64(medianFloat(sizes))))
	} else {
		p("- neonproxy's log has no \"data directory materialized\" lines for these branches.")
	}
	if warmAgain > 0 || sr.warmWithoutLocal > 0 {
		p("- **warm tries were not all warm**: %d materialization(s) of %s after its cold start, %d try(ies) found local_bytes 0.",
			warmAgain, sr.warmBranch, sr.warmWithoutLocal)
	}
}

// mbytes formats bytes in MB (10⁶), as neonproxy's mb_per_s.
func mbytes(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/mb) }

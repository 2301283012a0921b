package schemadiff

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// base is the starting point the Compare cases modify.
func base() *Schema {
	return &Schema{
		Schemas:    []string{"app", "public"},
		Extensions: []Extension{{Name: "plpgsql", Version: "1.0", Schema: "pg_catalog"}},
		Types:      []Type{{Schema: "public", Name: "mood", Def: "enum ('sad', 'happy')"}},
		Sequences: []Sequence{{Schema: "public", Name: "ticket_seq", DataType: "bigint",
			Start: 1, Increment: 1, Min: 1, Max: 9223372036854775807, Cache: 1}},
		Tables: []Table{
			{Schema: "public", Name: "t", Kind: "table", Columns: []Column{
				{Name: "id", Type: "integer", NotNull: true},
				{Name: "email", Type: "text"},
				{Name: "created", Type: "timestamp with time zone", Default: "now()"},
			}},
			{Schema: "app", Name: "settings", Kind: "table", Columns: []Column{
				{Name: "k", Type: "text", NotNull: true},
			}},
		},
		Views: []View{{Schema: "public", Name: "v", Def: " SELECT t.id\n   FROM public.t;"}},
		Indexes: []Index{
			{Schema: "public", Table: "t", Name: "t_pkey", Def: "CREATE UNIQUE INDEX t_pkey ON public.t USING btree (id)"},
			{Schema: "public", Table: "t", Name: "t_email_idx", Def: "CREATE INDEX t_email_idx ON public.t USING btree (email)"},
		},
		Constraints: []Constraint{
			{Schema: "public", Table: "t", Name: "t_pkey", Def: "PRIMARY KEY (id)"},
			{Schema: "public", Table: "t", Name: "t_id_check", Def: "CHECK ((id > 0))"},
		},
		Triggers: []Trigger{{Schema: "public", Table: "t", Name: "t_audit",
			Def: "CREATE TRIGGER t_audit AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.audit()"}},
		Functions: []Function{
			{Schema: "public", Name: "f", IdentityArgs: "integer", Arguments: "x integer", Result: "integer",
				Kind: "function", Language: "sql", Volatility: "volatile", BodyMD5: "aaaa"},
			{Schema: "public", Name: "audit", IdentityArgs: "", Arguments: "", Result: "trigger",
				Language: "plpgsql", BodyMD5: "bbbb"},
		},
	}
}

func tableNamed(s *Schema, name string) *Table {
	for i := range s.Tables {
		if s.Tables[i].Schema+"."+s.Tables[i].Name == name {
			return &s.Tables[i]
		}
	}
	panic("no table " + name)
}

func strs(cs []Change) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	return out
}

func TestCompare(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(b *Schema)
		want   []string
	}{
		{
			name:   "identical",
			mutate: func(*Schema) {},
		},
		{
			name: "reordered slices and unset defaults are not changes",
			mutate: func(b *Schema) {
				slices.Reverse(b.Tables)
				slices.Reverse(b.Indexes)
				b.Tables[1].Kind = ""          // "" means "table"
				b.Functions[0].Volatility = "" // "" means "volatile"
				b.Functions[0].Kind = ""       // "" means "function"
			},
		},
		{
			name: "add column",
			mutate: func(b *Schema) {
				tb := tableNamed(b, "public.t")
				tb.Columns = append(tb.Columns, Column{Name: "name", Type: "text", NotNull: true, Default: "''::text"})
			},
			want: []string{"+ column public.t.name text not null default ''::text"},
		},
		{
			name: "remove column",
			mutate: func(b *Schema) {
				tb := tableNamed(b, "public.t")
				tb.Columns = tb.Columns[:2]
			},
			want: []string{"- column public.t.created timestamp with time zone default now()"},
		},
		{
			name: "column type and nullability",
			mutate: func(b *Schema) {
				c := &tableNamed(b, "public.t").Columns[1]
				c.Type = "character varying(100)"
				c.NotNull = true
			},
			want: []string{"~ column public.t.email: type text → character varying(100); nullable → not null"},
		},
		{
			name: "column default, collation, identity",
			mutate: func(b *Schema) {
				tb := tableNamed(b, "public.t")
				tb.Columns[0].Identity = "always"
				tb.Columns[1].Collation = `"C"`
				tb.Columns[2].Default = ""
			},
			want: []string{
				"~ column public.t.created: default now() → (none)",
				`~ column public.t.email: collation (none) → "C"`,
				"~ column public.t.id: identity (none) → always",
			},
		},
		{
			name: "column default becomes generated",
			mutate: func(b *Schema) {
				c := &tableNamed(b, "public.t").Columns[2]
				c.Default, c.Generated = "'2020-01-01'::timestamp with time zone", true
			},
			want: []string{"~ column public.t.created: default now() → generated always as ('2020-01-01'::timestamp with time zone) stored"},
		},
		{
			name: "add table lists its columns, and its index and constraint separately",
			mutate: func(b *Schema) {
				b.Tables = append(b.Tables, Table{Schema: "public", Name: "u", Kind: "table", Unlogged: true, Columns: []Column{
					{Name: "id", Type: "bigint", NotNull: true, Identity: "by default"},
					{Name: "note", Type: "text", Collation: `"C"`},
				}})
				b.Indexes = append(b.Indexes, Index{Schema: "public", Table: "u", Name: "u_pkey", Def: "CREATE UNIQUE INDEX u_pkey ON public.u USING btree (id)"})
				b.Constraints = append(b.Constraints, Constraint{Schema: "public", Table: "u", Name: "u_pkey", Def: "PRIMARY KEY (id)"})
			},
			want: []string{
				`+ table public.u unlogged (id bigint not null generated by default as identity, note text collate "C")`,
				"+ constraint public.u.u_pkey PRIMARY KEY (id)",
				"+ index public.u_pkey CREATE UNIQUE INDEX u_pkey ON public.u USING btree (id)",
			},
		},
		{
			name: "rename table is remove plus add",
			mutate: func(b *Schema) {
				tableNamed(b, "app.settings").Name = "config"
			},
			want: []string{"+ table app.config (k text not null)", "- table app.settings (k text not null)"},
		},
		{
			name: "partitioning",
			mutate: func(b *Schema) {
				tb := tableNamed(b, "public.t")
				tb.Kind, tb.PartitionKey = "partitioned table", "RANGE (id)"
				b.Tables = append(b.Tables, Table{Schema: "public", Name: "t1", Kind: "table",
					PartitionOf: "public.t", PartitionBound: "FOR VALUES FROM (1) TO (10)",
					Columns: []Column{{Name: "id", Type: "integer", NotNull: true}}})
			},
			want: []string{
				"~ table public.t: kind table → partitioned table; partition key (none) → RANGE (id)",
				"+ table public.t1 (id integer not null) partition of public.t FOR VALUES FROM (1) TO (10)",
			},
		},
		{
			name: "index definition and validity",
			mutate: func(b *Schema) {
				b.Indexes[1].Def = "CREATE INDEX t_email_idx ON public.t USING btree (lower(email))"
				b.Indexes[1].Invalid = true
			},
			want: []string{"~ index public.t_email_idx: CREATE INDEX t_email_idx ON public.t USING btree (email) → " +
				"CREATE INDEX t_email_idx ON public.t USING btree (lower(email)); valid → invalid"},
		},
		{
			name: "constraint removed and changed",
			mutate: func(b *Schema) {
				b.Constraints = b.Constraints[:1]
				b.Constraints[0].Def = "PRIMARY KEY (id) DEFERRABLE"
			},
			want: []string{
				"- constraint public.t.t_id_check CHECK ((id > 0))",
				"~ constraint public.t.t_pkey: PRIMARY KEY (id) → PRIMARY KEY (id) DEFERRABLE",
			},
		},
		{
			name: "function body changed",
			mutate: func(b *Schema) {
				b.Functions[0].BodyMD5 = "cccc"
			},
			want: []string{"~ function public.f(integer): body changed"},
		},
		{
			name: "function signature properties changed",
			mutate: func(b *Schema) {
				f := &b.Functions[0]
				f.Arguments, f.Result, f.Volatility, f.Strict, f.Config = "y integer", "bigint", "immutable", true, "search_path=public"
			},
			want: []string{"~ function public.f(integer): arguments x integer → y integer; returns integer → bigint; " +
				"volatility volatile → immutable; called on null input → strict; config (none) → search_path=public"},
		},
		{
			name: "function overload added, procedure added",
			mutate: func(b *Schema) {
				b.Functions = append(b.Functions,
					Function{Schema: "public", Name: "f", IdentityArgs: "text", Arguments: "x text", Result: "integer",
						Kind: "function", Language: "sql", Volatility: "stable", SecurityDef: true},
					Function{Schema: "app", Name: "p", IdentityArgs: "integer", Arguments: "integer",
						Kind: "procedure", Language: "plpgsql"})
			},
			want: []string{
				"+ function app.p(integer) procedure language plpgsql",
				"+ function public.f(text) (x text) returns integer language sql stable security definer",
			},
		},
		{
			name: "view changed and added",
			mutate: func(b *Schema) {
				b.Views[0].Def = " SELECT t.id\n   FROM public.t\n  WHERE (t.id > 1);"
				b.Views = append(b.Views, View{Schema: "public", Name: "mv", Materialized: true, Def: " SELECT 1 AS one;"})
			},
			want: []string{
				"+ view public.mv materialized as SELECT 1 AS one",
				"~ view public.v: definition changed",
			},
		},
		{
			name: "view whitespace only is not a change",
			mutate: func(b *Schema) {
				b.Views[0].Def = "SELECT t.id FROM public.t"
			},
		},
		{
			name: "sequence, type, extension, schema, trigger",
			mutate: func(b *Schema) {
				b.Sequences[0].Increment, b.Sequences[0].Cycle = 5, true
				b.Types[0].Def = "enum ('sad', 'ok', 'happy')"
				b.Extensions[0].Version = "1.1"
				b.Extensions = append(b.Extensions, Extension{Name: "hstore", Version: "1.8", Schema: "public"})
				b.Schemas = []string{"public", "reporting"}
				b.Tables = b.Tables[:1] // app.settings went with schema app
				b.Triggers[0].State = "disabled"
			},
			want: []string{
				"- schema app",
				"+ schema reporting",
				"+ extension hstore version 1.8 in schema public",
				"~ extension plpgsql: version 1.0 → 1.1",
				"~ type public.mood: enum ('sad', 'happy') → enum ('sad', 'ok', 'happy')",
				"~ sequence public.ticket_seq: increment 1 → 5; no cycle → cycle",
				"- table app.settings (k text not null)",
				"~ trigger public.t.t_audit: state enabled → disabled",
			},
		},
		{
			name: "table dropped with its dependents",
			mutate: func(b *Schema) {
				b.Tables = b.Tables[1:]
				b.Indexes, b.Constraints, b.Triggers, b.Views = nil, nil, nil, nil
			},
			want: []string{
				"- table public.t (id integer not null, email text, created timestamp with time zone default now())",
				"- constraint public.t.t_id_check CHECK ((id > 0))",
				"- constraint public.t.t_pkey PRIMARY KEY (id)",
				"- index public.t_email_idx CREATE INDEX t_email_idx ON public.t USING btree (email)",
				"- index public.t_pkey CREATE UNIQUE INDEX t_pkey ON public.t USING btree (id)",
				"- view public.v as SELECT t.id FROM public.t",
				"- trigger public.t.t_audit CREATE TRIGGER t_audit AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.audit()",
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base(), base()
			tc.mutate(b)
			got := Compare(a, b)
			if !slices.Equal(strs(got), tc.want) {
				t.Errorf("Compare:\ngot:\n  %s\nwant:\n  %s", strings.Join(strs(got), "\n  "), strings.Join(tc.want, "\n  "))
			}
			checkMirror(t, got, Compare(b, a))
		})
	}
}

// checkMirror asserts that comparing in the other direction reports the same
// objects with added and removed swapped.
func checkMirror(t *testing.T, fwd, back []Change) {
	t.Helper()
	type obj struct{ kind, action, object string }
	flip := map[string]string{Added: Removed, Removed: Added, Changed: Changed}
	var want, got []obj
	for _, c := range fwd {
		want = append(want, obj{c.Kind, flip[c.Action], c.Object})
	}
	for _, c := range back {
		got = append(got, obj{c.Kind, c.Action, c.Object})
	}
	cmpObj := func(x, y obj) int { return strings.Compare(fmt.Sprint(x), fmt.Sprint(y)) }
	slices.SortFunc(want, cmpObj)
	slices.SortFunc(got, cmpObj)
	if !slices.Equal(got, want) {
		t.Errorf("reverse Compare is not the mirror image:\ngot  %v\nwant %v", got, want)
	}
}

func TestCompareNil(t *testing.T) {
	if got := Compare(nil, nil); len(got) != 0 {
		t.Errorf("Compare(nil, nil) = %v", got)
	}
	got := Compare(nil, base())
	if len(got) == 0 || got[0].String() != "+ schema app" {
		t.Fatalf("Compare(nil, base) = %v", strs(got))
	}
	for _, c := range got {
		if c.Action != Added {
			t.Errorf("Compare(nil, base) reports %v", c)
		}
		if c.Kind == KindColumn {
			t.Errorf("columns of an added table are reported separately: %v", c)
		}
	}
}

func TestChangeString(t *testing.T) {
	for _, tc := range []struct {
		c    Change
		want string
	}{
		{Change{KindColumn, Added, "public.t.email", "text not null"}, "+ column public.t.email text not null"},
		{Change{KindTable, Removed, "public.t", "(id integer)"}, "- table public.t (id integer)"},
		{Change{KindColumn, Changed, "public.t.id", "type integer → bigint"}, "~ column public.t.id: type integer → bigint"},
		{Change{KindSchema, Added, "app", ""}, "+ schema app"},
		{Change{KindSchema, "", "app", ""}, "? schema app"},
	} {
		if got := tc.c.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.c, got, tc.want)
		}
	}
}

const pgBin = "/usr/lib/postgresql/15/bin"

// startPostgres initdbs and starts a throwaway PostgreSQL 15 cluster that
// listens only on a unix socket, and returns the socket directory.
func startPostgres(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(pgBin, "initdb")); errors.Is(err, fs.ErrNotExist) {
		t.Skipf("PostgreSQL 15 not installed: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}

	// PostgreSQL refuses to run as root, so as root run it as postgres.
	var cred *syscall.Credential
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root and no postgres OS user: %v", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}

	// Not t.TempDir: its parents are 0700, which postgres could not traverse.
	// Kept short because a unix socket path is limited to ~107 bytes.
	root, err := os.MkdirTemp("", "schemadiff-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	if err := os.Chmod(root, 0o711); err != nil {
		t.Fatal(err)
	}
	data, sock := filepath.Join(root, "data"), filepath.Join(root, "run")
	for _, d := range []string{data, sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if uid >= 0 {
			if err := os.Chown(d, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	logFile := filepath.Join(sock, "postgres.log")

	run := func(name string, args ...string) error {
		cmd := exec.Command(filepath.Join(pgBin, name), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "HOME=" + sock}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-N",
		"-E", "UTF8", "--locale=C", "--no-instructions"); err != nil {
		t.Fatal(err)
	}
	// Registered before start so a half-started server is stopped too.
	t.Cleanup(func() {
		if err := run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"); err != nil {
			t.Logf("stopping postgres: %v", err)
		}
	})
	opts := fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories='%s' -c fsync=off -c full_page_writes=off", sock)
	if err := run("pg_ctl", "-D", data, "-l", logFile, "-w", "-t", "30", "-o", opts, "start"); err != nil {
		log, _ := os.ReadFile(logFile)
		t.Fatalf("%v\n%s", err, log)
	}
	return sock
}

func execAll(ctx context.Context, t *testing.T, conn *pgx.Conn, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// baseDDL is the schema both databases start from.
var baseDDL = []string{
	`CREATE TYPE mood AS ENUM ('sad', 'happy')`,
	`CREATE DOMAIN posint AS integer NOT NULL CHECK (VALUE > 0)`,
	`CREATE SEQUENCE ticket_seq`,
	`CREATE TABLE users (
		id integer PRIMARY KEY,
		email text,
		age integer CONSTRAINT users_age_check CHECK (age >= 0),
		feeling mood,
		created timestamptz DEFAULT now())`,
	`CREATE TABLE orders (
		id bigserial PRIMARY KEY,
		user_id integer NOT NULL REFERENCES users (id),
		qty posint,
		total numeric(10,2))`,
	`CREATE INDEX orders_user_idx ON orders (user_id)`,
	`CREATE TABLE legacy (x int, y text)`,
	`CREATE VIEW big_orders AS SELECT id, total FROM orders WHERE total > 100`,
	`CREATE FUNCTION add(a integer, b integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT a + b'`,
	`CREATE FUNCTION greet(name text) RETURNS text LANGUAGE plpgsql AS $$BEGIN RETURN 'hello ' || name; END$$`,
	`CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.created := now(); RETURN NEW; END$$`,
	`CREATE SCHEMA app`,
	`CREATE TABLE app.settings (k text PRIMARY KEY, v text)`,
	// Unchanged objects of the less common sorts, so their catalog queries
	// run and must read identically in both databases.
	`CREATE TYPE pair AS (x integer, y integer)`,
	`CREATE TABLE events (id int, ts date NOT NULL, label text COLLATE "C",
		label_lc text GENERATED ALWAYS AS (lower(label)) STORED) PARTITION BY RANGE (ts)`,
	`CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')`,
	`CREATE INDEX events_ts_idx ON events (ts)`,
	`CREATE UNLOGGED TABLE scratch (k int)`,
	`CREATE MATERIALIZED VIEW user_ids AS SELECT id FROM users`,
	`CREATE UNIQUE INDEX user_ids_id_idx ON user_ids (id)`,
	`CREATE PROCEDURE app.clear(n integer) LANGUAGE sql BEGIN ATOMIC DELETE FROM app.settings WHERE k = n::text; END`,
	`CREATE FUNCTION app.double(x integer) RETURNS integer LANGUAGE sql IMMUTABLE RETURN x * 2`,
}

// branchDDL turns b into the branch; wantChanges is what Compare(a, b) must
// report for it.
var branchDDL = []string{
	// add column
	`ALTER TABLE users ADD COLUMN name text NOT NULL DEFAULT ''`,
	// change type
	`ALTER TABLE orders ALTER COLUMN user_id TYPE bigint`,
	// add index
	`CREATE INDEX users_email_idx ON users (lower(email))`,
	// drop constraint
	`ALTER TABLE users DROP CONSTRAINT users_age_check`,
	// add function
	`CREATE FUNCTION mul(a integer, b integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT a * b'`,
	// change function body
	`CREATE OR REPLACE FUNCTION greet(name text) RETURNS text LANGUAGE plpgsql AS $$BEGIN RETURN 'hi ' || name; END$$`,
	// drop table
	`DROP TABLE legacy`,
	// add table; its identity sequence is part of the column, not a sequence
	`CREATE TABLE audit (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, msg text NOT NULL)`,
	// the other kinds
	`ALTER TYPE mood ADD VALUE 'ok' BEFORE 'happy'`,
	`ALTER SEQUENCE ticket_seq INCREMENT BY 5`,
	`CREATE OR REPLACE VIEW big_orders AS SELECT id, total FROM orders WHERE total > 1000`,
	`CREATE SCHEMA reporting`,
	`CREATE TRIGGER users_touch BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION touch()`,
	`ALTER TABLE users ALTER COLUMN email SET NOT NULL`,
	// A SQL-standard body lives in prosqlbody, not prosrc.
	`CREATE OR REPLACE FUNCTION app.double(x integer) RETURNS integer LANGUAGE sql IMMUTABLE RETURN x * 3`,
	// Its implicit multirange type and constructor functions are not listed.
	`CREATE TYPE floatrange AS RANGE (subtype = float8)`,
	// Dropped and recreated identically: new OIDs, same names, no change.
	`DROP FUNCTION add(integer, integer)`,
	`CREATE FUNCTION add(a integer, b integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT a + b'`,
	`DROP INDEX orders_user_idx`,
	`CREATE INDEX orders_user_idx ON orders (user_id)`,
}

var wantChanges = []string{
	"+ schema reporting",
	"+ extension hstore version HSTORE_VERSION in schema public",
	"+ type public.floatrange range over double precision",
	"~ type public.mood: enum ('sad', 'happy') → enum ('sad', 'ok', 'happy')",
	"~ sequence public.ticket_seq: increment 1 → 5",
	"+ table public.audit (id bigint not null generated always as identity, msg text not null)",
	"- table public.legacy (x integer, y text)",
	"~ column public.orders.user_id: type integer → bigint",
	"~ column public.users.email: nullable → not null",
	"+ column public.users.name text not null default ''::text",
	"+ constraint public.audit.audit_pkey PRIMARY KEY (id)",
	"- constraint public.users.users_age_check CHECK ((age >= 0))",
	"+ index public.audit_pkey CREATE UNIQUE INDEX audit_pkey ON public.audit USING btree (id)",
	"+ index public.users_email_idx CREATE INDEX users_email_idx ON public.users USING btree (lower(email))",
	"~ view public.big_orders: definition changed",
	"~ function app.double(integer): body changed",
	"~ function public.greet(text): body changed",
	"+ function public.mul(integer, integer) (a integer, b integer) returns integer language sql immutable",
	"+ trigger public.users.users_touch CREATE TRIGGER users_touch BEFORE UPDATE ON public.users " +
		"FOR EACH ROW EXECUTE FUNCTION public.touch()",
}

func TestSnapshotCompare(t *testing.T) {
	sock := startPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	connString := func(db string) string { return fmt.Sprintf("host=%s user=postgres dbname=%s", sock, db) }
	connect := func(db string) *pgx.Conn {
		t.Helper()
		conn, err := pgx.Connect(ctx, connString(db))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		return conn
	}

	admin := connect("postgres")
	execAll(ctx, t, admin, "CREATE DATABASE a")
	ca := connect("a")
	execAll(ctx, t, ca, baseDDL...)
	// CREATE DATABASE ... TEMPLATE needs the template to have no sessions.
	if err := ca.Close(ctx); err != nil {
		t.Fatal(err)
	}
	execAll(ctx, t, admin, "CREATE DATABASE b TEMPLATE a")
	cb := connect("b")
	execAll(ctx, t, cb, branchDDL...)
	want := slices.Clone(wantChanges)

	// Extension members (hstore's types and functions) must not leak into the
	// diff; only the extension itself is a change. contrib may be missing.
	var version string
	err := cb.QueryRow(ctx, "SELECT default_version FROM pg_available_extensions WHERE name = 'hstore'").Scan(&version)
	switch {
	case err == nil:
		execAll(ctx, t, cb, "CREATE EXTENSION hstore")
		for i, w := range want {
			want[i] = strings.ReplaceAll(w, "HSTORE_VERSION", version)
		}
	case errors.Is(err, pgx.ErrNoRows):
		t.Log("hstore not available; extension membership not exercised")
		want = slices.DeleteFunc(want, func(w string) bool { return strings.Contains(w, "HSTORE_VERSION") })
	default:
		t.Fatal(err)
	}

	ca = connect("a")
	sa, err := Snapshot(ctx, ca)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := Snapshot(ctx, cb)
	if err != nil {
		t.Fatal(err)
	}
	got := Compare(sa, sb)
	if !slices.Equal(strs(got), want) {
		t.Errorf("Compare(a, b):\ngot:\n  %s\nwant:\n  %s", strings.Join(strs(got), "\n  "), strings.Join(want, "\n  "))
	}
	checkMirror(t, got, Compare(sb, sa))

	// Snapshot must leave the session's search_path alone.
	var path string
	if err := ca.QueryRow(ctx, "SHOW search_path").Scan(&path); err != nil {
		t.Fatal(err)
	}
	if path != `"$user", public` {
		t.Errorf("search_path after Snapshot = %q", path)
	}

	// The same database read through a pool and inside a caller's
	// transaction (the savepoint path) is the same schema.
	pool, err := pgxpool.New(ctx, connString("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	sp, err := Snapshot(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if d := Compare(sa, sp); len(d) != 0 {
		t.Errorf("snapshot through a pool differs: %v", strs(d))
	}
	tx, err := ca.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	st, err := Snapshot(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	if d := Compare(sa, st); len(d) != 0 {
		t.Errorf("snapshot inside a transaction differs: %v", strs(d))
	}
	if err := tx.QueryRow(ctx, "SHOW search_path").Scan(&path); err != nil {
		t.Fatal(err)
	}
	if path != `"$user", public` {
		t.Errorf("search_path in the caller's transaction after Snapshot = %q", path)
	}
	if testing.Verbose() {
		for _, c := range Compare(nil, sa) {
			t.Log(c)
		}
	}
	if len(sa.Tables) == 0 || len(sa.Functions) == 0 || len(sa.Indexes) == 0 {
		t.Errorf("snapshot of a looks empty: %+v", sa)
	}
}

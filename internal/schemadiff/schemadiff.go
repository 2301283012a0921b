// Package schemadiff reports the DDL differences between two PostgreSQL
// databases (typically two branches of one project) as a readable list.
//
// Snapshot reads the user-visible schema of one database from the system
// catalogs; Compare lists what changed going from one snapshot to another.
//
// Objects are identified by name, never by OID: two branches share OIDs only
// until they diverge, and an object dropped and recreated identically on one
// branch is not a change. The flip side is that a rename cannot be told apart
// from a drop plus a create, so a renamed table (column, index, ...) is
// reported as removed under its old name and added under its new one.
//
// Names in Change.Object are the raw catalog names joined with "." (not
// quoted), for readability. Definitions in Change.Detail come from the
// server's own deparsers (pg_get_indexdef, pg_get_constraintdef, ...) and are
// quoted and schema-qualified the way PostgreSQL prints them.
package schemadiff

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Schema is the user-visible schema of one database. System schemas
// (pg_catalog, information_schema, pg_toast, temporary schemas) and objects
// that belong to an extension are not included; extensions are listed
// instead.
//
// Snapshot fills every slice in a deterministic order, but Compare does not
// depend on order, so hand-built Schemas may list objects in any order.
// Within one Schema names are expected to be unique per kind.
type Schema struct {
	Schemas     []string // namespace names, e.g. "public"
	Extensions  []Extension
	Types       []Type
	Sequences   []Sequence
	Tables      []Table
	Views       []View
	Indexes     []Index
	Constraints []Constraint
	Triggers    []Trigger
	Functions   []Function
}

// Extension is an installed extension (pg_extension).
type Extension struct {
	Name    string
	Version string
	Schema  string
}

// Type is a user-defined enum, domain, composite or range type.
type Type struct {
	Schema string
	Name   string
	// Def summarises the type, e.g. "enum ('a', 'b')",
	// "domain over integer not null default 0 constraint d_check CHECK ((VALUE > 0))",
	// "composite (x integer, y integer)", "range over numeric".
	Def string
}

// Sequence is a standalone or serial sequence. Identity-column sequences are
// not listed: they are part of their column (Column.Identity).
type Sequence struct {
	Schema    string
	Name      string
	DataType  string // "bigint", "integer", "smallint"
	Start     int64
	Increment int64
	Min       int64
	Max       int64
	Cache     int64
	Cycle     bool
}

// Table is an ordinary, partitioned or foreign table.
type Table struct {
	Schema string
	Name   string
	// Kind is "table", "partitioned table" or "foreign table"; "" means "table".
	Kind     string
	Unlogged bool
	// PartitionKey is pg_get_partkeydef for a partitioned table, e.g. "RANGE (ts)".
	PartitionKey string
	// PartitionOf is the parent ("schema.name") of a partition, and
	// PartitionBound its bound, e.g. "FOR VALUES FROM (1) TO (10)".
	PartitionOf    string
	PartitionBound string
	Columns        []Column // in attnum order
}

// Column is one live column of a table.
type Column struct {
	Name      string
	Type      string // format_type, e.g. "character varying(20)"
	NotNull   bool
	Default   string // pg_get_expr of the default; the generation expression when Generated
	Generated bool   // GENERATED ALWAYS AS (Default) STORED
	Identity  string // "", "always" or "by default"
	Collation string // only when it differs from the type's default collation
}

// View is a view or materialized view.
type View struct {
	Schema       string
	Name         string
	Materialized bool
	Def          string // pg_get_viewdef
}

// Index is an index on a table or materialized view, including the indexes
// that back primary key, unique and exclusion constraints (so adding a
// primary key reports both the constraint and its index). Index names are
// unique per schema, so an index is identified as "schema.index".
type Index struct {
	Schema  string
	Table   string
	Name    string
	Def     string // pg_get_indexdef
	Invalid bool   // indisvalid is false, e.g. after a failed CREATE INDEX CONCURRENTLY
}

// Constraint is a table constraint (primary key, unique, check, foreign key,
// exclusion). Constraint names are unique per table, so a constraint is
// identified as "schema.table.constraint". NOT NULL is a column property in
// PostgreSQL 15 and is reported on the column.
type Constraint struct {
	Schema string
	Table  string
	Name   string
	Def    string // pg_get_constraintdef
}

// Trigger is a user trigger on a table or view, identified as
// "schema.table.trigger".
type Trigger struct {
	Schema string
	Table  string
	Name   string
	Def    string // pg_get_triggerdef
	// State is "" when the trigger fires normally (origin), otherwise
	// "disabled", "replica" or "always" (ALTER TABLE ... ENABLE/DISABLE TRIGGER).
	State string
}

// Function is a function or procedure. Its identity is its name and input
// argument types (IdentityArgs), as in PostgreSQL, so overloads are distinct
// objects and renaming a parameter is a change, not a new function.
type Function struct {
	Schema       string
	Name         string
	IdentityArgs string // argument types only, e.g. "integer, text"
	Arguments    string // pg_get_function_arguments: names, modes and defaults
	Result       string // pg_get_function_result; "" for procedures
	Kind         string // "function", "procedure" or "window"; "" means "function"
	Language     string
	Volatility   string // "volatile", "stable" or "immutable"; "" means "volatile"
	Strict       bool
	SecurityDef  bool
	Config       string // proconfig, e.g. "search_path=public"
	BodyMD5      string // md5 of the body (prosrc, or the SQL-standard body)
}

// Action says what happened to an object going from the old schema to the new.
const (
	Added   = "added"
	Removed = "removed"
	Changed = "changed"
)

// Change kinds, in the order Compare reports them: roughly the order in which
// a migration would create the objects.
const (
	KindSchema     = "schema"
	KindExtension  = "extension"
	KindType       = "type"
	KindSequence   = "sequence"
	KindTable      = "table"
	KindColumn     = "column"
	KindConstraint = "constraint"
	KindIndex      = "index"
	KindView       = "view"
	KindFunction   = "function"
	KindTrigger    = "trigger"
)

var kindOrder = []string{
	KindSchema, KindExtension, KindType, KindSequence, KindTable, KindColumn,
	KindConstraint, KindIndex, KindView, KindFunction, KindTrigger,
}

// Change is one difference between two schemas.
type Change struct {
	Kind   string // one of the Kind constants
	Action string // Added, Removed or Changed
	// Object is the schema-qualified name: "public.t" for a table, view,
	// sequence, type or index, "public.t.email" for a column,
	// "public.t.t_check" for a constraint or trigger, "public.f(integer, text)"
	// for a function, "public" for a schema, "pgcrypto" for an extension.
	Object string
	// Detail describes the object when it was added or removed (e.g. a
	// column's "text not null", an index's CREATE INDEX statement) and what
	// differs when it changed (e.g. "type integer → bigint; nullable → not
	// null"). It may be empty.
	Detail string
}

// String renders c on one line: "+ kind object detail" for an added object,
// "- kind object detail" for a removed one and "~ kind object: detail" for a
// changed one, e.g. "+ column public.t.email text not null" or
// "~ column public.t.id: type integer → bigint".
func (c Change) String() string {
	var sign, sep string
	switch c.Action {
	case Added:
		sign, sep = "+", " "
	case Removed:
		sign, sep = "-", " "
	case Changed:
		sign, sep = "~", ": "
	default:
		sign, sep = "?", " "
	}
	s := sign + " " + c.Kind + " " + c.Object
	if c.Detail != "" {
		s += sep + c.Detail
	}
	return s
}

// Compare lists what changed going from a to b, sorted by kind (in the order
// of the Kind constants), then object name, then action. A nil Schema is
// treated as empty, so Compare(nil, s) lists everything in s as added.
//
// Every object gets at most one Change; when several of its properties
// changed they are all in Detail, separated by "; ". The columns of an added
// or removed table are listed in the table's Detail rather than as separate
// column changes; its indexes, constraints and triggers are separate objects
// with names of their own and are reported individually. Compare(b, a) is
// therefore the mirror image of Compare(a, b).
func Compare(a, b *Schema) []Change {
	if a == nil {
		a = &Schema{}
	}
	if b == nil {
		b = &Schema{}
	}
	var out []Change
	out = diffObjects(out, KindSchema, a.Schemas, b.Schemas,
		func(s string) string { return s },
		func(string) string { return "" },
		func(string, string) []string { return nil })
	out = diffObjects(out, KindExtension, a.Extensions, b.Extensions,
		func(e Extension) string { return e.Name },
		func(e Extension) string { return "version " + e.Version + " in schema " + e.Schema },
		func(x, y Extension) []string {
			var d []string
			d = field(d, "version", x.Version, y.Version)
			return field(d, "schema", x.Schema, y.Schema)
		})
	out = diffObjects(out, KindType, a.Types, b.Types,
		func(t Type) string { return t.Schema + "." + t.Name },
		func(t Type) string { return t.Def },
		func(x, y Type) []string { return arrow(nil, x.Def, y.Def) })
	out = diffObjects(out, KindSequence, a.Sequences, b.Sequences,
		func(s Sequence) string { return s.Schema + "." + s.Name },
		describeSequence, diffSequence)
	out = diffObjects(out, KindTable, a.Tables, b.Tables,
		tableKey, describeTable, diffTable)
	out = diffColumns(out, a.Tables, b.Tables)
	out = diffObjects(out, KindConstraint, a.Constraints, b.Constraints,
		func(c Constraint) string { return c.Schema + "." + c.Table + "." + c.Name },
		func(c Constraint) string { return c.Def },
		func(x, y Constraint) []string { return arrow(nil, x.Def, y.Def) })
	out = diffObjects(out, KindIndex, a.Indexes, b.Indexes,
		func(i Index) string { return i.Schema + "." + i.Name },
		func(i Index) string {
			if i.Invalid {
				return i.Def + " (invalid)"
			}
			return i.Def
		},
		func(x, y Index) []string {
			d := field(nil, "table", x.Table, y.Table)
			if x.Def != y.Def {
				d = arrow(d, x.Def, y.Def)
			}
			return flag(d, x.Invalid, y.Invalid, "valid", "invalid")
		})
	out = diffObjects(out, KindView, a.Views, b.Views,
		func(v View) string { return v.Schema + "." + v.Name },
		func(v View) string {
			s := "as " + oneLine(v.Def)
			if v.Materialized {
				s = "materialized " + s
			}
			return s
		},
		func(x, y View) []string {
			d := flag(nil, x.Materialized, y.Materialized, "view", "materialized view")
			if oneLine(x.Def) != oneLine(y.Def) {
				d = append(d, "definition changed")
			}
			return d
		})
	out = diffObjects(out, KindFunction, a.Functions, b.Functions,
		func(f Function) string { return f.Schema + "." + f.Name + "(" + f.IdentityArgs + ")" },
		describeFunction, diffFunction)
	out = diffObjects(out, KindTrigger, a.Triggers, b.Triggers,
		func(t Trigger) string { return t.Schema + "." + t.Table + "." + t.Name },
		func(t Trigger) string {
			if t.State != "" {
				return t.Def + " (" + t.State + ")"
			}
			return t.Def
		},
		func(x, y Trigger) []string {
			d := []string(nil)
			if x.Def != y.Def {
				d = arrow(d, x.Def, y.Def)
			}
			return field(d, "state", or(x.State, "enabled"), or(y.State, "enabled"))
		})

	rank := make(map[string]int, len(kindOrder))
	for i, k := range kindOrder {
		rank[k] = i
	}
	slices.SortFunc(out, func(x, y Change) int {
		return cmp.Or(
			cmp.Compare(rank[x.Kind], rank[y.Kind]),
			cmp.Compare(x.Object, y.Object),
			cmp.Compare(x.Action, y.Action),
		)
	})
	return out
}

// diffObjects appends to out the objects of one kind that were removed from
// a, added in b, or present in both but different (diff returns the
// differences as readable phrases).
func diffObjects[T any](out []Change, kind string, a, b []T, key func(T) string,
	describe func(T) string, diff func(x, y T) []string) []Change {
	am := byKey(a, key)
	bm := byKey(b, key)
	for k, x := range am {
		y, ok := bm[k]
		if !ok {
			out = append(out, Change{Kind: kind, Action: Removed, Object: k, Detail: describe(x)})
			continue
		}
		if d := diff(x, y); len(d) > 0 {
			out = append(out, Change{Kind: kind, Action: Changed, Object: k, Detail: strings.Join(d, "; ")})
		}
	}
	for k, y := range bm {
		if _, ok := am[k]; !ok {
			out = append(out, Change{Kind: kind, Action: Added, Object: k, Detail: describe(y)})
		}
	}
	return out
}

func byKey[T any](s []T, key func(T) string) map[string]T {
	m := make(map[string]T, len(s))
	for _, v := range s {
		m[key(v)] = v
	}
	return m
}

// diffColumns compares the columns of tables present in both schemas; the
// columns of added and removed tables are already in the table's Detail.
func diffColumns(out []Change, a, b []Table) []Change {
	bm := byKey(b, tableKey)
	for _, ta := range a {
		tb, ok := bm[tableKey(ta)]
		if !ok {
			continue
		}
		prefix := tableKey(ta) + "."
		out = diffObjects(out, KindColumn, ta.Columns, tb.Columns,
			func(c Column) string { return prefix + c.Name },
			describeColumn, diffColumn)
	}
	return out
}

func tableKey(t Table) string { return t.Schema + "." + t.Name }

func describeTable(t Table) string {
	var parts []string
	if k := or(t.Kind, "table"); k != "table" {
		parts = append(parts, k)
	}
	if t.Unlogged {
		parts = append(parts, "unlogged")
	}
	cols := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = c.Name + " " + describeColumn(c)
	}
	parts = append(parts, "("+strings.Join(cols, ", ")+")")
	if t.PartitionKey != "" {
		parts = append(parts, "partition by "+t.PartitionKey)
	}
	if t.PartitionOf != "" {
		parts = append(parts, "partition of "+partitionOf(t))
	}
	return strings.Join(parts, " ")
}

func partitionOf(t Table) string {
	if t.PartitionOf == "" {
		return ""
	}
	return strings.TrimSpace(t.PartitionOf + " " + t.PartitionBound)
}

func diffTable(x, y Table) []string {
	d := field(nil, "kind", or(x.Kind, "table"), or(y.Kind, "table"))
	d = flag(d, x.Unlogged, y.Unlogged, "logged", "unlogged")
	d = field(d, "partition key", x.PartitionKey, y.PartitionKey)
	return field(d, "partition of", partitionOf(x), partitionOf(y))
}

func describeColumn(c Column) string {
	parts := []string{c.Type}
	if c.Collation != "" {
		parts = append(parts, "collate "+c.Collation)
	}
	if c.NotNull {
		parts = append(parts, "not null")
	}
	if e := columnExpr(c); e != "" {
		parts = append(parts, e)
	}
	if c.Identity != "" {
		parts = append(parts, "generated "+c.Identity+" as identity")
	}
	return strings.Join(parts, " ")
}

// columnExpr is the column's default or generation expression as it would
// appear in CREATE TABLE.
func columnExpr(c Column) string {
	switch {
	case c.Default == "":
		return ""
	case c.Generated:
		return "generated always as (" + c.Default + ") stored"
	default:
		return "default " + c.Default
	}
}

func diffColumn(x, y Column) []string {
	d := field(nil, "type", x.Type, y.Type)
	d = field(d, "collation", x.Collation, y.Collation)
	d = flag(d, x.NotNull, y.NotNull, "nullable", "not null")
	if x.Generated == y.Generated {
		label := "default"
		if x.Generated {
			label = "generated as"
		}
		d = field(d, label, x.Default, y.Default)
	} else {
		d = arrow(d, or(columnExpr(x), "no default"), or(columnExpr(y), "no default"))
	}
	return field(d, "identity", x.Identity, y.Identity)
}

func describeSequence(s Sequence) string {
	str := fmt.Sprintf("as %s start %d increment %d minvalue %d maxvalue %d cache %d",
		s.DataType, s.Start, s.Increment, s.Min, s.Max, s.Cache)
	if s.Cycle {
		str += " cycle"
	}
	return str
}

func diffSequence(x, y Sequence) []string {
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	d := field(nil, "type", x.DataType, y.DataType)
	d = field(d, "start", i(x.Start), i(y.Start))
	d = field(d, "increment", i(x.Increment), i(y.Increment))
	d = field(d, "minvalue", i(x.Min), i(y.Min))
	d = field(d, "maxvalue", i(x.Max), i(y.Max))
	d = field(d, "cache", i(x.Cache), i(y.Cache))
	return flag(d, x.Cycle, y.Cycle, "no cycle", "cycle")
}

func describeFunction(f Function) string {
	var parts []string
	if k := or(f.Kind, "function"); k != "function" {
		parts = append(parts, k)
	}
	// The identity in Object already shows the argument types; repeat the
	// arguments only when they carry more (names, modes, defaults).
	if f.Arguments != f.IdentityArgs {
		parts = append(parts, "("+f.Arguments+")")
	}
	if f.Result != "" {
		parts = append(parts, "returns "+f.Result)
	}
	if f.Language != "" {
		parts = append(parts, "language "+f.Language)
	}
	if v := or(f.Volatility, "volatile"); v != "volatile" {
		parts = append(parts, v)
	}
	if f.Strict {
		parts = append(parts, "strict")
	}
	if f.SecurityDef {
		parts = append(parts, "security definer")
	}
	if f.Config != "" {
		parts = append(parts, "set "+f.Config)
	}
	return strings.Join(parts, " ")
}

func diffFunction(x, y Function) []string {
	d := field(nil, "kind", or(x.Kind, "function"), or(y.Kind, "function"))
	d = field(d, "arguments", x.Arguments, y.Arguments)
	d = field(d, "returns", x.Result, y.Result)
	d = field(d, "language", x.Language, y.Language)
	d = field(d, "volatility", or(x.Volatility, "volatile"), or(y.Volatility, "volatile"))
	d = flag(d, x.Strict, y.Strict, "called on null input", "strict")
	d = flag(d, x.SecurityDef, y.SecurityDef, "security invoker", "security definer")
	d = field(d, "config", x.Config, y.Config)
	if x.BodyMD5 != y.BodyMD5 {
		d = append(d, "body changed")
	}
	return d
}

// field appends "name old → new" when the values differ; an empty value is
// shown as "(none)".
func field(d []string, name, x, y string) []string {
	if x == y {
		return d
	}
	return append(d, name+" "+or(x, "(none)")+" → "+or(y, "(none)"))
}

// arrow appends "old → new" when the values differ.
func arrow(d []string, x, y string) []string {
	if x == y {
		return d
	}
	return append(d, or(x, "(none)")+" → "+or(y, "(none)"))
}

// flag appends "off → on" or "on → off" when a boolean property flipped.
func flag(d []string, x, y bool, off, on string) []string {
	switch {
	case x == y:
		return d
	case y:
		return append(d, off+" → "+on)
	default:
		return append(d, on+" → "+off)
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// oneLine collapses the whitespace of a deparsed definition (pg_get_viewdef
// spreads a query over several lines) and drops its trailing semicolon.
func oneLine(s string) string {
	return strings.TrimSuffix(strings.Join(strings.Fields(s), " "), ";")
}

package schemadiff

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Querier runs a query. *pgx.Conn, *pgxpool.Pool, *pgxpool.Conn and pgx.Tx
// all satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// txBeginner and savepointBeginner are the optional extras Snapshot uses to
// get a consistent view of the catalogs: *pgx.Conn and *pgxpool.Pool have
// BeginTx, pgx.Tx only Begin (a savepoint).
type txBeginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

type savepointBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Snapshot reads the user-visible schema of the database q is connected to.
// It needs only read access to the system catalogs. Targets PostgreSQL 15
// (the catalog columns it reads exist from PostgreSQL 14 on).
//
// When q can begin a transaction (as *pgx.Conn, *pgxpool.Pool and pgx.Tx
// can), Snapshot runs all its queries in one read-only REPEATABLE READ
// transaction (a savepoint inside a caller's pgx.Tx, whose isolation is the
// caller's), so they see one consistent state of the catalogs, and sets
// search_path to pg_catalog for that transaction only, so every name the
// server deparses is schema-qualified and independent of the session's
// search_path. The transaction is rolled back, leaving the session as it
// was. With any other Querier the queries run as they are, and deparsed
// names depend on the session's search_path; compare only snapshots taken
// the same way.
func Snapshot(ctx context.Context, q Querier) (*Schema, error) {
	var tx pgx.Tx
	var err error
	switch b := q.(type) {
	case txBeginner:
		tx, err = b.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	case savepointBeginner:
		tx, err = b.Begin(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("schemadiff: begin snapshot transaction: %w", err)
	}
	if tx != nil {
		// Roll back even when ctx is already cancelled, so a pooled
		// connection is not returned mid-transaction.
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if _, err := tx.Exec(ctx, "SET LOCAL search_path = pg_catalog"); err != nil {
			return nil, fmt.Errorf("schemadiff: set search_path: %w", err)
		}
		q = tx
	}

	s := &Schema{}
	steps := []struct {
		what string
		run  func(context.Context, Querier, *Schema) error
	}{
		{"schemas", readSchemas},
		{"extensions", readExtensions},
		{"types", readTypes},
		{"sequences", readSequences},
		{"tables", readTables},
		{"columns", readColumns},
		{"views", readViews},
		{"indexes", readIndexes},
		{"constraints", readConstraints},
		{"triggers", readTriggers},
		{"functions", readFunctions},
	}
	for _, st := range steps {
		if err := st.run(ctx, q, s); err != nil {
			return nil, fmt.Errorf("schemadiff: read %s: %w", st.what, err)
		}
	}
	return s, nil
}

// userNamespace excludes the system and temporary schemas; n is pg_namespace.
const userNamespace = `n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
	AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'`

// notExtensionMember excludes objects created by CREATE EXTENSION: they are
// covered by the extension's name and version. %s is the catalog
// ("pg_class", "pg_proc", ...) and %s the object's OID expression.
const notExtensionMember = `NOT EXISTS (SELECT 1 FROM pg_depend d
	WHERE d.classid = '%s'::regclass AND d.objid = %s AND d.deptype = 'e')`

// userRelation restricts the relation c (with namespace n) to user objects.
var userRelation = userNamespace + " AND " + fmt.Sprintf(notExtensionMember, "pg_class", "c.oid")

// each runs sql and calls scan for every row.
func each(ctx context.Context, q Querier, sql string, scan func(pgx.Rows) error) error {
	rows, err := q.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

func readSchemas(ctx context.Context, q Querier, s *Schema) error {
	sql := `SELECT n.nspname FROM pg_namespace n
		WHERE ` + userNamespace + ` AND ` + fmt.Sprintf(notExtensionMember, "pg_namespace", "n.oid") + `
		ORDER BY 1`
	return each(ctx, q, sql, func(r pgx.Rows) error {
		var name string
		err := r.Scan(&name)
		s.Schemas = append(s.Schemas, name)
		return err
	})
}

func readExtensions(ctx context.Context, q Querier, s *Schema) error {
	const sql = `SELECT e.extname, e.extversion, n.nspname
		FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
		ORDER BY 1`
	return each(ctx, q, sql, func(r pgx.Rows) error {
		var e Extension
		err := r.Scan(&e.Name, &e.Version, &e.Schema)
		s.Extensions = append(s.Extensions, e)
		return err
	})
}

func readTypes(ctx context.Context, q Querier, s *Schema) error {
	// Base types need C code and come from extensions; array, multirange and
	// table row types are created implicitly with their element, range or
	// table, so only enums, domains, ranges and standalone composites remain.
	sql := `SELECT n.nspname, t.typname,
			CASE t.typtype
			WHEN 'e' THEN 'enum (' || coalesce((SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
				FROM pg_enum e WHERE e.enumtypid = t.oid), '') || ')'
			WHEN 'd' THEN 'domain over ' || format_type(t.typbasetype, t.typtypmod)
				|| CASE WHEN t.typnotnull THEN ' not null' ELSE '' END
				|| coalesce(' default ' || pg_get_expr(t.typdefaultbin, 0), '')
				|| coalesce((SELECT string_agg(' constraint ' || quote_ident(k.conname) || ' ' || pg_get_constraintdef(k.oid), '' ORDER BY k.conname)
					FROM pg_constraint k WHERE k.contypid = t.oid), '')
			WHEN 'c' THEN 'composite (' || coalesce((SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
				FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped), '') || ')'
			WHEN 'r' THEN 'range over ' || (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r WHERE r.rngtypid = t.oid)
			END
		FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
		WHERE (t.typtype IN ('e', 'd', 'r')
				OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c')))
			AND ` + userNamespace + ` AND ` + fmt.Sprintf(notExtensionMember, "pg_type", "t.oid") + `
		ORDER BY 1, 2`
	return each(ctx, q, sql, func(r pgx.Rows) error {
		var t Type
		err := r.Scan(&t.Schema, &t.Name, &t.Def)
		s.Types = append(s.Types, t)
		return err
	})
}

func readSequences(ctx context.Context, q Querier, s *Schema) error {
	// An identity column's sequence depends internally ('i') on the column
	// and is reported as part of it; serial sequences ('a') are listed.
	sql := `SELECT n.nspname, c.relname, format_type(sq.seqtypid, NULL),
			sq.seqstart, sq.seqincrement, sq.seqmin, sq.seqmax, sq.seqcache, sq.seqcycle
		FROM pg_sequence sq
		JOIN pg_class c ON c.oid = sq.seqrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE ` + userRelation + `
			AND NOT EXISTS (SELECT 1 FROM pg_depend d
				WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'i')
		ORDER BY 1, 2`
	return each(ctx, q, sql, func(r pgx.Rows) error {
		var seq Sequence
		err := r.Scan(&seq.Schema, &seq.Name, &seq.DataType, &seq.Start, &seq.Increment, &seq.Min, &seq.Max, &seq.Cache, &seq.Cycle)
		s.Sequences = append(s.Sequences, seq)
		return err
	})
}

func readTables(ctx context.Context, q Querier, s *Schema) error {
	sql := `SELECT n.nspname, c.relname,
			CASE c.relkind WHEN 'p' THEN 'partitioned table' WHEN 'f' THEN 'foreign table' ELSE 'table' END,
			c.relpersistence = 'u',
			coalesce(pg_get_partkeydef(c.oid), ''),
			coalesce((SELECT pn.nspname || '.' || p.relname
				FROM pg_inherits i
				JOIN pg_class p ON p.oid = i.inhparent
				JOIN pg_namespace pn ON pn.oid = p.relnamespace
				WHERE i.inhrelid = c.oid AND c.relispartition), ''),
			coalesce(pg_get_expr(c.relpartbound, c.oid), '')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p', 'f') AND ` + userRelation + `
		ORDER BY 1, 2`
	return each(ctx, q, sql, func(r pgx.Rows) error {
		var t Table
		err := r.Scan(&t.Schema, &t.Name, &t.Kind, &t.Unlogged, &t.PartitionKey, &t.PartitionOf, &t.PartitionBound)
		s.Tables = append(s.Tables, t)
		return err
	})
}

// readColumns fills the Columns of the tables readTables found; it relies on
// both queries using the same filter and order.
func readColumns(ctx context.Context, q Querier, s *Schema) error {
	sql := `SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
			coalesce(pg_get_expr(ad.adbin, ad.adrelid), ''), a.attgenerated <> '',
			CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' ELSE '' END,
			CASE WHEN a.attcollation <> t.typcollation THEN a.attcollation::regcollation::text ELSE '' END
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_type t ON t.oid = a.atttypid
		LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
		WHERE a.attnum > 0 AND NOT a.attisdropped
			AND c.relkind IN ('r', 'p', 'f') AND ` + userRelation + `
		ORDER BY 1, 2, a.attnum`
	tables := make(map[string]*Table, len(s.Tables))
	for i := range s.Tables {
		tables[tableKey(s.Tables[i])] = &s.Tables[i]
	}
	return each(ctx, q, sql, func(r pgx.Rows) error {
		var schema, table string
		var c Column
		if err := r.Scan(&schema, &table, &c.Name, &c.Type, &c.NotNull, &c.Default, &c.Generated, &c.Identity, &c.Collation); err != nil {
			return err
		}
		t := tables[schema+"."+table]
		if t == nil {
			// Created between the two queries; only possible without a
			// snapshot transaction.
			return fmt.Errorf("column %s.%s.%s of an unknown table", schema, table, c.Name)
		}
		t.Columns = append(t.Columns, c)
		return nil
	})
}

func readViews(ctx context.Context, q Querier, s *Schema) error {
	sql := `SELECT n.nspname, c.relname, c.relkind = 'm', pg_get_viewdef(c.oid)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('v', 'm') AND ` + userRelation + `
		ORDER BY 1, 2`
	return each(ctx, q, sql, func(r pgx.Rows) error {
		var v View
		err := r.Scan(&v.Schema, &v.Name, &v.Materialized, &v.Def)
		s.Views = append(s.Views, v)
		return err
	})
}

func readIndexes(ctx context.Context, q Querier, s *Schema) error {
	// c is the indexed relation, so an extension's tables drop out with
	// their indexes; the index lives in its table's schema.
	sql := `SELECT n.nspname, c.relname, i.relname, pg_get_indexdef(i.oid), NOT x.indisvalid
		FROM pg_index x
		JOIN pg_class i ON i.oid = x.indexrelid
		JOIN pg_class c ON c.oid = x.indrelid
		JOIN pg_namespace n ON n.oid = i.relnamespace
		WHERE ` + userRelation + `
		ORDER BY 1, 3`
	return each(ctx, q, sql, func(r pgx.Rows) error {
		var i Index
		err := r.Scan(&i.Schema, &i.Table, &i.Name, &i.Def, &i.Invalid)
		s.Indexes = append(s.Indexes, i)
		return err
	})
}

func readConstraints(ctx context.Context, q Querier, s *Schema) error {
	// Constraint triggers ('t') are reported as triggers; domain
	// constraints (conrelid 0) are part of their domain's Type.Def.
	sql := `SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid)
		FROM pg_constraint k
		JOIN pg_class c ON c.oid = k.conrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE k.contype <> 't' AND ` + userRelation + `
		ORDER BY 1, 2, 3`
	return each(ctx, q, sql, func(r pgx.Rows) error {
		var k Constraint
		err := r.Scan(&k.Schema, &k.Table, &k.Name, &k.Def)
		s.Constraints = append(s.Constraints, k)
		return err
	})
}

func readTriggers(ctx context.Context, q Querier, s *Schema) error {
	// Internal triggers implement foreign keys and are covered by the
	// constraint.
	sql := `SELECT n.nspname, c.relname, g.tgname, pg_get_triggerdef(g.oid),
			CASE g.tgenabled WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'replica' WHEN 'A' THEN 'always' ELSE '' END
		FROM pg_trigger g
		JOIN pg_class c ON c.oid = g.tgrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE NOT g.tgisinternal AND ` + userRelation + `
		ORDER BY 1, 2, 3`
	return each(ctx, q, sql, func(r pgx.Rows) error {
		var t Trigger
		err := r.Scan(&t.Schema, &t.Table, &t.Name, &t.Def, &t.State)
		s.Triggers = append(s.Triggers, t)
		return err
	})
}

func readFunctions(ctx context.Context, q Querier, s *Schema) error {
	// Aggregates have no body of their own and are not covered. Functions
	// with an internal dependency (range constructors) come with their type.
	// A SQL-standard body (BEGIN ATOMIC) is in prosqlbody, not prosrc.
	sql := `SELECT n.nspname, p.proname, oidvectortypes(p.proargtypes), pg_get_function_arguments(p.oid),
			CASE WHEN p.prokind = 'p' THEN '' ELSE coalesce(pg_get_function_result(p.oid), '') END,
			CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'w' THEN 'window' ELSE 'function' END,
			l.lanname,
			CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END,
			p.proisstrict, p.prosecdef,
			coalesce(array_to_string(p.proconfig, ', '), ''),
			md5(coalesce(pg_get_function_sqlbody(p.oid), p.prosrc, ''))
		FROM pg_proc p
		JOIN pg_namespace n ON n.oid = p.pronamespace
		JOIN pg_language l ON l.oid = p.prolang
		WHERE p.prokind IN ('f', 'p', 'w') AND ` + userNamespace + `
			AND ` + fmt.Sprintf(notExtensionMember, "pg_proc", "p.oid") + `
			AND NOT EXISTS (SELECT 1 FROM pg_depend d
				WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'i')
		ORDER BY 1, 2, 3`
	return each(ctx, q, sql, func(r pgx.Rows) error {
		var f Function
		err := r.Scan(&f.Schema, &f.Name, &f.IdentityArgs, &f.Arguments, &f.Result, &f.Kind,
			&f.Language, &f.Volatility, &f.Strict, &f.SecurityDef, &f.Config, &f.BodyMD5)
		s.Functions = append(s.Functions, f)
		return err
	})
}

// Package router turns what a client says at connection time (TLS SNI and
// startup parameters) into a Route to a branch, and keeps the branch
// registry. It imports nothing else of neonproxy's.
package router

import (
	"errors"
	"fmt"
	"strings"
)

// RouteKind names which routing key chose the branch.
type RouteKind string

// Routing keys, in precedence order.
const (
	KindSNI     RouteKind = "sni"
	KindOptions RouteKind = "options"
	KindDBName  RouteKind = "dbname"
	KindDefault RouteKind = "default"
)

// Route is where a client connection goes.
type Route struct {
	Branch string // branch name, without the -pooler suffix
	// Database on the branch's compute.
	Database string
	User     string
	Kind     RouteKind
	// Pooler is set when the routed name carried the -pooler suffix
	// (transaction pooling for this connection).
	Pooler bool
	// Options is the startup "options" value with the endpoint= token
	// removed (other -c settings kept); empty when nothing is left.
	Options string
}

// RouteError is a routing failure; the proxy sends it as SQLSTATE 08004.
type RouteError struct {
	Message string
	Hint    string
}

func (e *RouteError) Error() string { return e.Message }

// ErrNoRoute: the startup names no branch and there is no default branch.
var ErrNoRoute = errors.New("no routing key")

// Resolver applies the routing rules of ARCHITECTURE.md:
//  1. TLS SNI BRANCH.<SNISuffix>;
//  2. options containing endpoint=BRANCH;
//  3. database BRANCH.DB, or BRANCH when a branch of that name exists;
//  4. DefaultBranch, database unchanged.
//
// First match wins. Two keys that name different branches are an error. A
// plain database name is a routing key only when no SNI or endpoint key is
// present: with one, it is just the database (a database may share a
// branch's name).
type Resolver struct {
	SNISuffix     string
	DefaultBranch string
	// Exists reports whether a branch exists; used only to decide whether
	// a plain database name names a branch (rule 3). Nil: never.
	Exists func(branch string) bool
}

type key struct {
	kind   RouteKind
	branch string // may carry -pooler
}

// Resolve computes the route for a connection. sni is the TLS server name
// ("" without TLS or SNI); params are the startup parameters.
func (r Resolver) Resolve(sni string, params map[string]string) (Route, error) {
	rt := Route{User: params["user"], Database: params["database"]}
	if rt.Database == "" {
		rt.Database = rt.User // libpq's and PostgreSQL's default
	}
	var keys []key
	if b, ok := r.fromSNI(sni); ok {
		keys = append(keys, key{KindSNI, b})
	}
	opts, ep, err := StripEndpoint(params["options"])
	if err != nil {
		return rt, err
	}
	rt.Options = opts
	if ep != "" {
		keys = append(keys, key{KindOptions, ep})
	}
	// Rule 3: BRANCH.DB is always a routing key; a plain BRANCH only when
	// nothing above chose a branch and the branch exists.
	if b, db, ok := strings.Cut(params["database"], "."); ok && b != "" {
		keys = append(keys, key{KindDBName, b})
		rt.Database = db
		if db == "" {
			rt.Database = "postgres"
		}
	} else if len(keys) == 0 && params["database"] != "" && r.Exists != nil {
		name := params["database"]
		if r.Exists(strings.TrimSuffix(name, PoolerSuffix)) {
			keys = append(keys, key{KindDBName, name})
			rt.Database = "postgres"
		}
	}
	if len(keys) == 0 {
		if r.DefaultBranch == "" {
			return rt, &RouteError{
				Message: "no branch named in the connection: " + ErrNoRoute.Error(),
				Hint:    r.hint(),
			}
		}
		rt.Branch, rt.Kind = r.DefaultBranch, KindDefault
		return rt, nil
	}
	for _, k := range keys[1:] {
		if k.branch != keys[0].branch {
			return rt, &RouteError{
				Message: fmt.Sprintf("inconsistent branch names in the connection: %s says %q but %s says %q", keys[0].kind, keys[0].branch, k.kind, k.branch),
				Hint:    "Name the branch once: in the host name (SNI), in options=endpoint=BRANCH, or in the database name BRANCH.DB.",
			}
		}
	}
	rt.Kind = keys[0].kind
	rt.Branch = keys[0].branch
	if strings.HasSuffix(rt.Branch, PoolerSuffix) {
		rt.Pooler = true
		rt.Branch = strings.TrimSuffix(rt.Branch, PoolerSuffix)
	}
	if err := ValidateName(rt.Branch); err != nil {
		return rt, &RouteError{Message: err.Error(), Hint: r.hint()}
	}
	return rt, nil
}

func (r Resolver) hint() string {
	h := "Name the branch with options=endpoint=BRANCH (in a URL: ?options=endpoint%3DBRANCH), or with the database name BRANCH.DB"
	if r.SNISuffix != "" {
		h += ", or connect over TLS to the host BRANCH." + r.SNISuffix + " (clients without SNI support must use options)"
	}
	return h + "."
}

// fromSNI returns the branch named by a server name BRANCH.<suffix>. Names
// under another domain (an IP address, "localhost") are no routing key.
func (r Resolver) fromSNI(sni string) (string, bool) {
	if sni == "" || r.SNISuffix == "" {
		return "", false
	}
	sni = strings.ToLower(strings.TrimSuffix(sni, "."))
	label, ok := strings.CutSuffix(sni, "."+strings.ToLower(r.SNISuffix))
	if !ok || label == "" || strings.Contains(label, ".") {
		return "", false
	}
	return label, true
}

// StripEndpoint removes the endpoint=BRANCH token (Neon's convention; also
// the --endpoint=BRANCH spelling) from a startup options string, keeping the
// other tokens byte for byte. Tokens are separated by unescaped whitespace
// and a backslash escapes the next character, as libpq and PostgreSQL read
// options. Two endpoint tokens naming different branches are an error.
func StripEndpoint(options string) (rest, endpoint string, err error) {
	if options == "" {
		return "", "", nil
	}
	var kept []string
	for _, tok := range splitOptions(options) {
		val, ok := strings.CutPrefix(tok, "endpoint=")
		if !ok {
			val, ok = strings.CutPrefix(tok, "--endpoint=")
		}
		if !ok {
			kept = append(kept, tok)
			continue
		}
		val = unescape(val)
		if endpoint != "" && val != endpoint {
			return "", "", &RouteError{
				Message: fmt.Sprintf("inconsistent branch names in options: %q and %q", endpoint, val),
				Hint:    "Pass endpoint=BRANCH once.",
			}
		}
		endpoint = val
	}
	return strings.Join(kept, " "), endpoint, nil
}

func splitOptions(s string) []string {
	var toks []string
	start, esc := -1, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case esc:
			esc = false
		case c == '\\':
			esc = true
			if start < 0 {
				start = i
			}
			continue
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			if start >= 0 {
				toks = append(toks, s[start:i])
				start = -1
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		toks = append(toks, s[start:])
	}
	return toks
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

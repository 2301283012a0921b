package proxy

import (
	"sort"
	"strings"

	"github.com/neonproxy/neonproxy/pool"
	"github.com/neonproxy/neonproxy/router"
)

// trackedParams are the settings PostgreSQL reports with ParameterStatus
// that a client may set. They are carried per client and re-applied with SET
// when the client lands on a server connection that differs, so clients
// with different values share one pool. Keys are lower case; values hold
// the server's spelling.
var trackedParams = map[string]string{
	"application_name":              "application_name",
	"client_encoding":               "client_encoding",
	"datestyle":                     "DateStyle",
	"intervalstyle":                 "IntervalStyle",
	"timezone":                      "TimeZone",
	"standard_conforming_strings":   "standard_conforming_strings",
	"default_transaction_read_only": "default_transaction_read_only",
}

// splitStartup divides a client's startup parameters: tracked settings
// (canonical names), and the rest, which become part of the pool key so
// that only clients with identical untracked settings share backends.
func splitStartup(rt router.Route, params map[string]string) (key pool.Key, tracked, dialParams map[string]string) {
	tracked = map[string]string{}
	dialParams = map[string]string{}
	var extra []string
	for k, v := range params {
		switch k {
		case "user", "database", "options":
			continue
		}
		if canon, ok := trackedParams[strings.ToLower(k)]; ok {
			tracked[canon] = v
			continue
		}
		dialParams[k] = v
		extra = append(extra, k+"="+v)
	}
	sort.Strings(extra)
	opts := rt.Options
	if len(extra) > 0 {
		opts += "\x00" + strings.Join(extra, "\x00")
	}
	return pool.Key{Branch: rt.Branch, Database: rt.Database, User: rt.User, Options: opts}, tracked, dialParams
}

// trackedNames are trackedParams' canonical names, sorted.
var trackedNames = func() []string {
	names := make([]string, 0, len(trackedParams))
	for _, canon := range trackedParams {
		names = append(names, canon)
	}
	sort.Strings(names)
	return names
}()

// settingsKey names a set of tracked settings exactly (names and values,
// NUL-separated, which neither can contain), so that two equal keys mean
// equal settings.
func settingsKey(settings map[string]string) string {
	var b strings.Builder
	b.WriteByte('k') // never ""
	for _, name := range trackedNames {
		if v, ok := settings[name]; ok {
			b.WriteString(name)
			b.WriteByte(0)
			b.WriteString(v)
			b.WriteByte(0)
		}
	}
	return b.String()
}

// setStatements returns the SET commands that bring have to want for the
// tracked settings, as one simple-query string ("" when nothing differs).
func setStatements(want, have map[string]string) string {
	// The common case, checked without allocating: nothing differs.
	differ := false
	for k, v := range want {
		if have[k] != v {
			differ = true
			break
		}
	}
	if !differ {
		return ""
	}
	var b strings.Builder
	names := make([]string, 0, len(want))
	for k := range want {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := want[k]
		if have[k] == v {
			continue
		}
		b.WriteString("SET ")
		b.WriteString(quoteIdent(k))
		b.WriteString(" TO ")
		b.WriteString(quoteLiteral(v))
		b.WriteString(";")
	}
	return b.String()
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteLiteral(s string) string {
	if strings.Contains(s, `\`) {
		return `E'` + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `'`, `''`) + `'`
	}
	return `'` + strings.ReplaceAll(s, `'`, `''`) + `'`
}

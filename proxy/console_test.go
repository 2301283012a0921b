package proxy

import (
	"reflect"
	"testing"

	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/pool"
)

func TestParseConsole(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  []consoleCmd
		bad   bool
	}{
		{query: "SHOW POOLS", want: []consoleCmd{{verb: "SHOW", what: "POOLS"}}},
		{query: "show pools;", want: []consoleCmd{{verb: "SHOW", what: "POOLS"}}},
		{query: "  Show\tClients ; SHOW servers;show STATS", want: []consoleCmd{
			{verb: "SHOW", what: "CLIENTS"}, {verb: "SHOW", what: "SERVERS"}, {verb: "SHOW", what: "STATS"}}},
		{query: "SHOW BRANCHES", want: []consoleCmd{{verb: "SHOW", what: "BRANCHES"}}},
		{query: "pause main", want: []consoleCmd{{verb: "PAUSE", arg: "main"}}},
		{query: "PAUSE Dev-1;", want: []consoleCmd{{verb: "PAUSE", arg: "dev-1"}}},
		{query: `RESUME "main"`, want: []consoleCmd{{verb: "RESUME", arg: "main"}}},
		{query: "reload", want: []consoleCmd{{verb: "RELOAD"}}},
		{query: "", want: nil},
		{query: " ; ;", want: nil},
		{query: "SHOW", bad: true},
		{query: "SHOW DATABASES", bad: true},
		{query: "SHOW POOLS extra", bad: true},
		{query: "PAUSE", want: []consoleCmd{{verb: "PAUSE"}}},
		{query: "resume;", want: []consoleCmd{{verb: "RESUME"}}},
		{query: "PAUSE a b", bad: true},
		{query: `PAUSE ""`, bad: true},
		{query: "RELOAD now", bad: true},
		{query: "SELECT 1", bad: true},
		{query: "SHOW POOLS; SELECT 1", bad: true},
	} {
		got, err := parseConsole(tc.query)
		if tc.bad {
			ce, ok := err.(*pgwire.Error)
			if !ok || ce.Code != "42601" || ce.Hint != consoleHint {
				t.Errorf("parseConsole(%q) = %v, %v; want a 42601 error with the command list", tc.query, got, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseConsole(%q) = %+v, %v; want %+v", tc.query, got, err, tc.want)
		}
	}
}

func TestPoolMode(t *testing.T) {
	if m := poolMode(pool.Key{Options: "-c x=y" + txnKeySuffix}); m != "transaction" {
		t.Fatal(m)
	}
	if m := poolMode(pool.Key{Options: "-c x=y"}); m != "session" {
		t.Fatal(m)
	}
}

// FuzzParseConsole: any query either parses into known commands or is
// refused with 42601; never a panic.
func FuzzParseConsole(f *testing.F) {
	for _, s := range []string{"SHOW POOLS", "show clients;", "PAUSE main; RESUME \"x\"", "RELOAD", ";;", "SHOW", "pause"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		cmds, err := parseConsole(q)
		if err != nil {
			return
		}
		for _, c := range cmds {
			switch c.verb {
			case "SHOW", "RELOAD":
			case "PAUSE", "RESUME": // "" means every branch
			default:
				t.Fatalf("%q: unknown verb %q accepted", q, c.verb)
			}
		}
	})
}

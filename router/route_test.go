package router

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	exists := func(b string) bool { return b == "main" || b == "dev" || b == "postgres" }
	r := Resolver{SNISuffix: "db.example.com", DefaultBranch: "main", Exists: exists}
	tests := []struct {
		name   string
		r      Resolver
		sni    string
		params map[string]string
		want   Route
		err    bool
	}{
		{name: "sni", sni: "dev.db.example.com", params: map[string]string{"user": "u", "database": "app"},
			want: Route{Branch: "dev", Database: "app", User: "u", Kind: KindSNI}},
		{name: "sni case and trailing dot", sni: "DEV.db.example.com.", params: map[string]string{"user": "u", "database": "app"},
			want: Route{Branch: "dev", Database: "app", User: "u", Kind: KindSNI}},
		{name: "sni pooler", sni: "dev-pooler.db.example.com", params: map[string]string{"user": "u", "database": "app"},
			want: Route{Branch: "dev", Database: "app", User: "u", Kind: KindSNI, Pooler: true}},
		{name: "sni other domain ignored", sni: "localhost", params: map[string]string{"user": "u", "database": "x"},
			want: Route{Branch: "main", Database: "x", User: "u", Kind: KindDefault}},
		{name: "sni nested label ignored", sni: "a.b.db.example.com", params: map[string]string{"user": "u", "database": "x"},
			want: Route{Branch: "main", Database: "x", User: "u", Kind: KindDefault}},
		{name: "options endpoint", params: map[string]string{"user": "u", "database": "app", "options": "endpoint=dev"},
			want: Route{Branch: "dev", Database: "app", User: "u", Kind: KindOptions}},
		{name: "options endpoint keeps -c", params: map[string]string{"user": "u", "database": "app", "options": "-c search_path=a\\ b endpoint=dev --statement_timeout=5s"},
			want: Route{Branch: "dev", Database: "app", User: "u", Kind: KindOptions, Options: "-c search_path=a\\ b --statement_timeout=5s"}},
		{name: "options --endpoint", params: map[string]string{"user": "u", "options": "--endpoint=dev"},
			want: Route{Branch: "dev", Database: "u", User: "u", Kind: KindOptions}},
		{name: "options only -c", params: map[string]string{"user": "u", "database": "x", "options": "-c a=b"},
			want: Route{Branch: "main", Database: "x", User: "u", Kind: KindDefault, Options: "-c a=b"}},
		{name: "sni and options agree", sni: "dev.db.example.com", params: map[string]string{"user": "u", "database": "app", "options": "endpoint=dev"},
			want: Route{Branch: "dev", Database: "app", User: "u", Kind: KindSNI}},
		{name: "sni and options conflict", sni: "dev.db.example.com", params: map[string]string{"user": "u", "options": "endpoint=main"}, err: true},
		{name: "two endpoints conflict", params: map[string]string{"user": "u", "options": "endpoint=main endpoint=dev"}, err: true},
		{name: "dbname dotted", params: map[string]string{"user": "u", "database": "dev.app"},
			want: Route{Branch: "dev", Database: "app", User: "u", Kind: KindDBName}},
		{name: "dbname dotted pooler", params: map[string]string{"user": "u", "database": "dev-pooler.app"},
			want: Route{Branch: "dev", Database: "app", User: "u", Kind: KindDBName, Pooler: true}},
		{name: "dbname dotted unknown branch still routes", params: map[string]string{"user": "u", "database": "nope.app"},
			want: Route{Branch: "nope", Database: "app", User: "u", Kind: KindDBName}},
		{name: "dbname plain branch", params: map[string]string{"user": "u", "database": "dev"},
			want: Route{Branch: "dev", Database: "postgres", User: "u", Kind: KindDBName}},
		{name: "dbname plain pooler", params: map[string]string{"user": "u", "database": "dev-pooler"},
			want: Route{Branch: "dev", Database: "postgres", User: "u", Kind: KindDBName, Pooler: true}},
		{name: "dbname plain not a branch", params: map[string]string{"user": "u", "database": "appdb"},
			want: Route{Branch: "main", Database: "appdb", User: "u", Kind: KindDefault}},
		{name: "dbname plain with sni is a database", sni: "main.db.example.com", params: map[string]string{"user": "u", "database": "dev"},
			want: Route{Branch: "main", Database: "dev", User: "u", Kind: KindSNI}},
		{name: "dbname dotted conflicts with sni", sni: "main.db.example.com", params: map[string]string{"user": "u", "database": "dev.app"}, err: true},
		{name: "dbname dotted agrees with options", params: map[string]string{"user": "u", "database": "dev.app", "options": "endpoint=dev"},
			want: Route{Branch: "dev", Database: "app", User: "u", Kind: KindOptions}},
		{name: "no key no default", r: Resolver{SNISuffix: "x"}, params: map[string]string{"user": "u", "database": "appdb"}, err: true},
		{name: "invalid branch name", params: map[string]string{"user": "u", "options": "endpoint=Bad_Name"}, err: true},
		{name: "database defaults to user", params: map[string]string{"user": "u"},
			want: Route{Branch: "main", Database: "u", User: "u", Kind: KindDefault}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := r
			if tt.r.SNISuffix != "" {
				res = tt.r
			}
			got, err := res.Resolve(tt.sni, tt.params)
			if tt.err {
				var re *RouteError
				if !errors.As(err, &re) || re.Message == "" || re.Hint == "" {
					t.Fatalf("want RouteError with message and hint, got %v (%+v)", err, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestNoRouteHintNamesAllWays(t *testing.T) {
	_, err := Resolver{SNISuffix: "db.example.com"}.Resolve("", map[string]string{"user": "u", "database": "x"})
	var re *RouteError
	if !errors.As(err, &re) {
		t.Fatal(err)
	}
	for _, want := range []string{"options=endpoint%3DBRANCH", "BRANCH.DB", "BRANCH.db.example.com"} {
		if !strings.Contains(re.Hint, want) {
			t.Errorf("hint %q lacks %q", re.Hint, want)
		}
	}
}

func TestValidateName(t *testing.T) {
	for name, ok := range map[string]bool{
		"main": true, "a": true, "exp-2026-11-23": true, "0": true,
		"": false, "Main": false, "a_b": false, "a.b": false, "x-pooler": false,
		"neonproxy": false, "neonproxy2": true,
		"abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij123":  true,
		"abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij1234": false,
	} {
		if err := ValidateName(name); (err == nil) != ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func FuzzStripEndpoint(f *testing.F) {
	f.Add("endpoint=main -c a=b")
	f.Add(`-c search_path=a\ b endpoint=x\ y`)
	f.Fuzz(func(t *testing.T, s string) {
		rest, ep, err := StripEndpoint(s)
		if err != nil {
			return
		}
		rest2, ep2, err := StripEndpoint(rest)
		if err != nil || ep2 != "" || rest2 != rest {
			t.Fatalf("not idempotent: %q -> %q (%q) -> %q (%q, %v)", s, rest, ep, rest2, ep2, err)
		}
	})
}

func TestAllowed(t *testing.T) {
	tests := []struct {
		list []string
		ip   string
		want bool
	}{
		{nil, "198.51.100.1", true},
		{[]string{"10.0.0.0/8"}, "10.1.2.3", true},
		{[]string{"10.0.0.0/8"}, "11.1.2.3", false},
		{[]string{"10.1.2.3"}, "10.1.2.3", true},
		{[]string{"10.1.2.3"}, "10.1.2.4", false},
		{[]string{"10.1.2.3/8"}, "10.200.0.1", true}, // host bits masked
		{[]string{"127.0.0.1"}, "::ffff:127.0.0.1", true},
		{[]string{"::ffff:10.0.0.0/104"}, "10.9.9.9", true},
		{[]string{"::1"}, "::1", true},
		{[]string{"2001:db8::/32"}, "2001:db8:1::5", true},
		{[]string{"2001:db8::/32"}, "10.0.0.1", false},
		{[]string{" 192.0.2.0/24 "}, "192.0.2.9", true},
	}
	for _, tc := range tests {
		prefixes, err := ParseAllowedIPs(tc.list)
		if err != nil {
			t.Fatalf("%v: %v", tc.list, err)
		}
		if got := Allowed(prefixes, netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("Allowed(%v, %s) = %v, want %v", tc.list, tc.ip, got, tc.want)
		}
	}
	for _, bad := range []string{"", "10.0.0.0/33", "host.example", "10.0.0.256", "1.2.3.4/-1"} {
		if _, err := ParseAllowedIPs([]string{bad}); !errors.Is(err, ErrInvalidSetting) {
			t.Errorf("%q: err %v, want ErrInvalidSetting", bad, err)
		}
	}
}

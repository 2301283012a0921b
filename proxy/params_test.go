package proxy

import (
	"testing"

	"github.com/neonproxy/neonproxy/router"
)

func TestSetStatements(t *testing.T) {
	tests := []struct {
		want, have map[string]string
		sql        string
	}{
		{map[string]string{"TimeZone": "UTC"}, map[string]string{"TimeZone": "UTC"}, ""},
		{map[string]string{"TimeZone": "Asia/Tokyo"}, map[string]string{"TimeZone": "UTC"}, `SET "TimeZone" TO 'Asia/Tokyo';`},
		{map[string]string{"application_name": "it's"}, nil, `SET "application_name" TO 'it''s';`},
		{map[string]string{"application_name": `a\b`}, nil, `SET "application_name" TO E'a\\b';`},
		{map[string]string{"DateStyle": "ISO", "TimeZone": "UTC"}, map[string]string{}, `SET "DateStyle" TO 'ISO';SET "TimeZone" TO 'UTC';`},
	}
	for _, tt := range tests {
		if got := setStatements(tt.want, tt.have); got != tt.sql {
			t.Errorf("setStatements(%v, %v) = %q, want %q", tt.want, tt.have, got, tt.sql)
		}
	}
}

func TestSettingsKey(t *testing.T) {
	m := func(kv ...string) map[string]string {
		out := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	sets := []map[string]string{
		m(),
		m("TimeZone", ""),
		m("TimeZone", "UTC"),
		m("TimeZone", "UTC", "DateStyle", "ISO"),
		m("TimeZone", "UTCDateStyle"),
		m("DateStyle", "UTC"),
		m("application_name", "a\x00TimeZone"),
	}
	seen := map[string]int{}
	for i, s := range sets {
		k := settingsKey(s)
		if k == "" {
			t.Fatalf("settingsKey(%v) is empty", s)
		}
		if j, dup := seen[k]; dup {
			t.Errorf("settingsKey(%v) = settingsKey(%v)", s, sets[j])
		}
		seen[k] = i
		if settingsKey(m(flatten(s)...)) != k {
			t.Errorf("settingsKey(%v) differs for an equal map", s)
		}
	}
}

func flatten(m map[string]string) []string {
	var kv []string
	for k, v := range m {
		kv = append(kv, k, v)
	}
	return kv
}

func TestSplitStartup(t *testing.T) {
	rt := router.Route{Branch: "main", Database: "db", User: "u", Options: "-c search_path=x"}
	key, tracked, dial := splitStartup(rt, map[string]string{
		"user": "u", "database": "main.db", "options": "endpoint=main -c search_path=x",
		"application_name": "app", "DateStyle": "ISO", "extra_float_digits": "3",
	})
	if tracked["application_name"] != "app" || tracked["DateStyle"] != "ISO" || len(tracked) != 2 {
		t.Fatalf("tracked %v", tracked)
	}
	if dial["extra_float_digits"] != "3" || len(dial) != 1 {
		t.Fatalf("dial params %v", dial)
	}
	if key.Branch != "main" || key.Database != "db" || key.Options != "-c search_path=x\x00extra_float_digits=3" {
		t.Fatalf("key %+v", key)
	}
	// Untracked settings separate pools; tracked ones do not.
	k2, _, _ := splitStartup(rt, map[string]string{"user": "u", "application_name": "other", "extra_float_digits": "3"})
	k3, _, _ := splitStartup(rt, map[string]string{"user": "u", "extra_float_digits": "2"})
	if k2 != key || k3 == key {
		t.Fatalf("keys: %+v %+v %+v", key, k2, k3)
	}
}

func BenchmarkSetStatementsEqual(b *testing.B) {
	want := map[string]string{"application_name": "", "client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC"}
	have := map[string]string{"application_name": "", "client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC", "server_version": "15"}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if setStatements(want, have) != "" {
			b.Fatal("differs")
		}
	}
}

func TestContainsFold(t *testing.T) {
	for _, tt := range []struct {
		s, w string
		want bool
	}{
		{"CREATE TEMP TABLE x", "temp", true},
		{"create temporary table", "temp", true},
		{"SELECT 1", "temp", false},
		{"select pg_Advisory_lock(1)", "advisory", true},
		{"tem", "temp", false},
	} {
		if got := containsFold([]byte(tt.s), tt.w); got != tt.want {
			t.Errorf("containsFold(%q, %q) = %v", tt.s, tt.w, got)
		}
	}
}

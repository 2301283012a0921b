package proxy

import (
	"maps"
	"testing"

	"github.com/neonproxy/neonproxy/router"
)

// TestRelayParams: the owner node gets the route spelled out, whatever key
// the client used here (an SNI does not survive the hop).
func TestRelayParams(t *testing.T) {
	for _, tc := range []struct {
		name        string
		rt          router.Route
		params      map[string]string
		wantOptions string
		wantDB      string
	}{
		{"sni", router.Route{Branch: "dev", Database: "app"}, map[string]string{"user": "u", "database": "app"}, "endpoint=dev", "app"},
		{"database branch.db", router.Route{Branch: "dev", Database: "app"}, map[string]string{"user": "u", "database": "dev.app"}, "endpoint=dev", "app"},
		{"pooler with other options", router.Route{Branch: "dev", Database: "postgres", Pooler: true, Options: "-c search_path=x"},
			map[string]string{"user": "u", "options": "endpoint=dev-pooler -c search_path=x"}, "-c search_path=x endpoint=dev-pooler", "postgres"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := maps.Clone(tc.params)
			got := relayParams(tc.rt, tc.params)
			if got["options"] != tc.wantOptions || got["database"] != tc.wantDB || got["user"] != "u" {
				t.Fatalf("relayParams = %v", got)
			}
			if !maps.Equal(before, tc.params) {
				t.Fatalf("the client's params changed in place: %v", tc.params)
			}
			// What the owner resolves from it is the same route.
			rt, err := router.Resolver{}.Resolve("", got)
			if err != nil || rt.Branch != tc.rt.Branch || rt.Database != tc.rt.Database || rt.Pooler != tc.rt.Pooler {
				t.Fatalf("owner resolves %+v, %v; want %+v", rt, err, tc.rt)
			}
		})
	}
}

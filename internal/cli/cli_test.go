package cli

import (
	"strings"
	"testing"

	"github.com/neonproxy/neonproxy/internal/admin"
)

func TestBranchTree(t *testing.T) {
	br := func(name, parent string) admin.BranchJSON { return admin.BranchJSON{Name: name, Parent: parent} }
	tests := []struct {
		name string
		in   []admin.BranchJSON
		want string // prefix+name per line
	}{
		{name: "empty", in: nil, want: ""},
		{name: "one root", in: []admin.BranchJSON{br("main", "")}, want: "main"},
		{
			name: "nested, siblings sorted",
			in:   []admin.BranchJSON{br("zeta", "main"), br("main", ""), br("dev", "main"), br("feat", "dev"), br("fix", "dev")},
			want: "main\n├── dev\n│   ├── feat\n│   └── fix\n└── zeta",
		},
		{
			name: "orphan shown as root",
			in:   []admin.BranchJSON{br("main", ""), br("lost", "gone")},
			want: "lost\nmain",
		},
		{
			name: "cycle shown once each",
			in:   []admin.BranchJSON{br("a", "b"), br("b", "a"), br("main", "")},
			want: "main\na\n└── b",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var lines []string
			for _, r := range branchTree(tc.in) {
				lines = append(lines, r.prefix+r.b.Name)
			}
			if got := strings.Join(lines, "\n"); got != tc.want {
				t.Errorf("tree:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

// TestCheckKeeperListen: the keeper's API beyond loopback needs a token.
func TestCheckKeeperListen(t *testing.T) {
	for _, tc := range []struct {
		listen, token string
		ok            bool
	}{
		{"127.0.0.1:7000", "", true},
		{"localhost:7000", "", true},
		{"[::1]:7000", "", true},
		{"0.0.0.0:7000", "", false},
		{"10.0.0.5:7000", "", false},
		{"0.0.0.0:7000", "t", true},
		{"no-port", "", false},
	} {
		if err := checkAPIListen("walkeeper", tc.listen, tc.token); (err == nil) != tc.ok {
			t.Errorf("checkAPIListen(%q, %q) = %v", tc.listen, tc.token, err)
		}
	}
}

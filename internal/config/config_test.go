package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultIsValid(t *testing.T) {
	d := Default()
	if err := d.Validate(); err != nil {
		t.Fatalf("Default() is invalid: %v", err)
	}
	for _, tc := range []struct{ key, got, want string }{
		{"listen", d.Listen, "127.0.0.1:5432"},
		{"admin_listen", d.AdminListen, "127.0.0.1:8432"},
		{"data_dir", d.DataDir, "./data"},
		{"default_branch", d.DefaultBranch, "main"},
		{"pool.mode", d.Pool.Mode, "session"},
		{"http_listen", d.HTTPListen, ""},
		{"consul.address", d.Consul.Address, ""},
	} {
		if tc.got != tc.want {
			t.Errorf("default %s = %q, want %q (ARCHITECTURE.md)", tc.key, tc.got, tc.want)
		}
	}
}

func TestLoadNoKeysIsDefault(t *testing.T) {
	for _, tc := range []struct{ name, path string }{
		{"no path", ""},
		{"empty file", writeFile(t, "")},
		{"only comments", writeFile(t, "# nothing\n# here\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Load(tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, Default()) {
				t.Fatalf("Load = %+v\nwant Default() = %+v", got, Default())
			}
		})
	}
}

// config.yaml at the repository root documents the defaults: loading it
// must give exactly Default().
func TestRepoConfigYAMLIsDefault(t *testing.T) {
	got, err := Load("../../config.yaml", nil)
	if err != nil {
		t.Fatalf("load config.yaml: %v", err)
	}
	want := Default()
	// peers: [] in the file is the documented form of "no peers".
	if len(got.Walkeeper.Peers) == 0 {
		got.Walkeeper.Peers = want.Walkeeper.Peers
	}
	// roles: [] and admin_users: [] likewise.
	if len(got.Roles) == 0 {
		got.Roles = want.Roles
	}
	if len(got.Pool.AdminUsers) == 0 {
		got.Pool.AdminUsers = want.Pool.AdminUsers
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("config.yaml differs from Default():\n got  %+v\n want %+v", got, want)
	}
}

// Every key of the Config struct appears in config.yaml, so the file is a
// complete reference.
func TestRepoConfigYAMLListsEveryKey(t *testing.T) {
	b, err := os.ReadFile("../../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(t reflect.Type, m map[string]any, prefix string)
	walk = func(typ reflect.Type, m map[string]any, prefix string) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			v, ok := m[tag]
			if !ok {
				t.Errorf("config.yaml lacks %s%s", prefix, tag)
				continue
			}
			if f.Type.Kind() == reflect.Struct && f.Type != durationType {
				sub, ok := v.(map[string]any)
				if !ok {
					t.Errorf("config.yaml: %s%s is not a mapping", prefix, tag)
					continue
				}
				walk(f.Type, sub, prefix+tag+".")
			}
		}
	}
	walk(reflect.TypeOf(Config{}), doc, "")
}

func TestEnvOverrides(t *testing.T) {
	tests := []struct {
		name  string
		env   []string
		check func(t *testing.T, c Config)
	}{
		{
			name: "suspend timeout with unit",
			env:  []string{"NEONPROXY_COMPUTE_SUSPEND_TIMEOUT=5s"},
			check: func(t *testing.T, c Config) {
				if c.Compute.SuspendTimeout.D() != 5*time.Second {
					t.Errorf("suspend_timeout = %v", c.Compute.SuspendTimeout)
				}
			},
		},
		{
			name: "duration in bare seconds",
			env:  []string{"NEONPROXY_COMPUTE_WAKE_TIMEOUT=90"},
			check: func(t *testing.T, c Config) {
				if c.Compute.WakeTimeout.D() != 90*time.Second {
					t.Errorf("wake_timeout = %v", c.Compute.WakeTimeout)
				}
			},
		},
		{
			name: "cache budget with a unit",
			env:  []string{"NEONPROXY_COMPUTE_CACHE_BYTES=512MiB"},
			check: func(t *testing.T, c Config) {
				if c.Compute.CacheBytes != 512<<20 {
					t.Errorf("cache_bytes = %d", c.Compute.CacheBytes)
				}
			},
		},
		{
			name: "cache budget in bare bytes",
			env:  []string{"NEONPROXY_COMPUTE_CACHE_BYTES=0"},
			check: func(t *testing.T, c Config) {
				if c.Compute.CacheBytes != 0 {
					t.Errorf("cache_bytes = %d", c.Compute.CacheBytes)
				}
			},
		},
		{
			name: "listen",
			env:  []string{"NEONPROXY_LISTEN=0.0.0.0:6543"},
			check: func(t *testing.T, c Config) {
				if c.Listen != "0.0.0.0:6543" {
					t.Errorf("listen = %q", c.Listen)
				}
			},
		},
		{
			name: "walkeeper peers list",
			env:  []string{"NEONPROXY_WALKEEPER_PEERS=a, b,"},
			check: func(t *testing.T, c Config) {
				if !reflect.DeepEqual(c.Walkeeper.Peers, []string{"a", "b"}) {
					t.Errorf("peers = %q", c.Walkeeper.Peers)
				}
			},
		},
		{
			name: "tls require bool",
			env:  []string{"NEONPROXY_TLS_REQUIRE=true"},
			check: func(t *testing.T, c Config) {
				if !c.TLS.Require {
					t.Errorf("tls.require = false")
				}
			},
		},
		{
			name: "log.connections defaults to true; env turns it off",
			env:  []string{"NEONPROXY_LOG_CONNECTIONS=false"},
			check: func(t *testing.T, c Config) {
				if c.Log.Connections || !Default().Log.Connections {
					t.Errorf("log.connections = %v (default %v), want false (default true)", c.Log.Connections, Default().Log.Connections)
				}
			},
		},
		{
			name: "int and nested string",
			env:  []string{"NEONPROXY_COMPUTE_MAX_RUNNING=7", "NEONPROXY_POOL_MODE=transaction", "NEONPROXY_LOG_LEVEL=debug"},
			check: func(t *testing.T, c Config) {
				if c.Compute.MaxRunning != 7 || c.Pool.Mode != "transaction" || c.Log.Level != "debug" {
					t.Errorf("got max_running=%d pool.mode=%q log.level=%q", c.Compute.MaxRunning, c.Pool.Mode, c.Log.Level)
				}
			},
		},
		{
			name: "env wins over file; other env ignored",
			env:  []string{"NEONPROXY_ADMIN_LISTEN=127.0.0.1:9999", "PATH=/bin", "NEONPROXY_ADMIN_LISTEN_X=ignored"},
			check: func(t *testing.T, c Config) {
				if c.AdminListen != "127.0.0.1:9999" {
					t.Errorf("admin_listen = %q", c.AdminListen)
				}
			},
		},
	}
	file := writeFile(t, "admin_listen: 127.0.0.1:1111\n")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(file, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestFileValues(t *testing.T) {
	c, err := Load(writeFile(t, `
listen: 0.0.0.0:5432
compute:
  suspend_timeout: 5m
  wake_timeout: 45
walkeeper:
  peers: [wk1:7000, wk2:7000]
  quorum: 2
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "0.0.0.0:5432" || c.Compute.SuspendTimeout.D() != 5*time.Minute || c.Compute.WakeTimeout.D() != 45*time.Second {
		t.Errorf("got %+v", c)
	}
	if !reflect.DeepEqual(c.Walkeeper.Peers, []string{"wk1:7000", "wk2:7000"}) || c.Walkeeper.Quorum != 2 {
		t.Errorf("walkeeper = %+v", c.Walkeeper)
	}
	// Keys not in the file keep their defaults, also inside a section.
	if c.Compute.PostgresBinDir != Default().Compute.PostgresBinDir || c.AdminListen != Default().AdminListen {
		t.Errorf("defaults lost: %+v", c)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		env     []string
		wantErr []string // substrings of the error
	}{
		{name: "unknown top-level key", file: "lisen: 1.2.3.4:5\n", wantErr: []string{"lisen", "not found"}},
		{name: "unknown nested key", file: "compute:\n  suspend_timout: 5s\n", wantErr: []string{"suspend_timout"}},
		{name: "bad duration in file", file: "compute:\n  suspend_timeout: soon\n", wantErr: []string{`invalid duration "soon"`, "300s", "line 2"}},
		{name: "bad duration in env", env: []string{"NEONPROXY_COMPUTE_SUSPEND_TIMEOUT=soon"}, wantErr: []string{"NEONPROXY_COMPUTE_SUSPEND_TIMEOUT", `invalid duration "soon"`}},
		{name: "zero duration", env: []string{"NEONPROXY_COMPUTE_SUSPEND_TIMEOUT=0"}, wantErr: []string{"compute.suspend_timeout must be > 0"}},
		{name: "bad pool mode in file", file: "pool:\n  mode: statement\n", wantErr: []string{`pool.mode "statement"`, "session or transaction"}},
		{name: "bad pool mode in env", env: []string{"NEONPROXY_POOL_MODE=Session"}, wantErr: []string{`pool.mode "Session"`}},
		{name: "bad size in file", file: "compute:\n  cache_bytes: lots\n", wantErr: []string{`invalid size "lots"`, "10GiB", "line 2"}},
		{name: "bad size in env", env: []string{"NEONPROXY_COMPUTE_CACHE_BYTES=-1"}, wantErr: []string{"NEONPROXY_COMPUTE_CACHE_BYTES", "invalid size"}},
		{name: "bad int in env", env: []string{"NEONPROXY_COMPUTE_MAX_RUNNING=many"}, wantErr: []string{"NEONPROXY_COMPUTE_MAX_RUNNING", `invalid integer "many"`}},
		{name: "bad bool in env", env: []string{"NEONPROXY_TLS_REQUIRE=yes please"}, wantErr: []string{"NEONPROXY_TLS_REQUIRE", "invalid boolean"}},
		{name: "cert without key", file: "tls:\n  cert_file: a.pem\n", wantErr: []string{"set together"}},
		{name: "empty data_dir", env: []string{"NEONPROXY_DATA_DIR="}, wantErr: []string{"data_dir must not be empty"}},
		{name: "bad log format", file: "log:\n  format: xml\n", wantErr: []string{`log.format "xml"`}},
		{name: "two problems reported together", file: "pool:\n  mode: x\nlog:\n  format: y\n", wantErr: []string{"pool.mode", "log.format"}},
		{name: "admin beyond loopback without token", file: "admin_listen: 0.0.0.0:8432\n", wantErr: []string{"admin_listen 0.0.0.0:8432 is not a loopback address", "admin.token"}},
		{name: "bad suspend_with_sessions", env: []string{"NEONPROXY_COMPUTE_SUSPEND_WITH_SESSIONS=kick"}, wantErr: []string{`compute.suspend_with_sessions "kick"`}},
		{name: "not YAML", file: "listen: [\n", wantErr: []string{"parse"}},
		{name: "missing file", file: "\x00missing", wantErr: []string{"read config"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			switch {
			case tc.file == "\x00missing":
				path = filepath.Join(t.TempDir(), "nope.yaml")
			case tc.file != "":
				path = writeFile(t, tc.file)
			}
			_, err := Load(path, tc.env)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestDiff(t *testing.T) {
	a, b := Default(), Default()
	if d := Diff(a, b); len(d) != 0 {
		t.Fatalf("Diff(default, default) = %v", d)
	}
	b.Pool.DefaultPoolSize = 5
	b.Listen = "0.0.0.0:5432"
	b.Pool.AdminUsers = []string{}
	if d := Diff(a, b); !reflect.DeepEqual(d, []string{"listen", "pool.default_pool_size"}) {
		t.Fatalf("Diff = %v", d)
	}
	b.Pool.AdminUsers = []string{"ops"}
	if d := Diff(a, b); len(d) != 3 || d[2] != "pool.admin_users" {
		t.Fatalf("Diff = %v", d)
	}
}

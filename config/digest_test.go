package config

import (
	"strings"
	"testing"
)

func TestAccessDigest(t *testing.T) {
	t.Chdir(t.TempDir())
	const base = `
users:
  - {name: admin, password: s3cret, tags: [administrator, monitoring]}
  - {name: app, password: app}
vhosts: [/, prod]
permissions:
  - {user: admin, vhost: /, configure: .*, write: .*, read: .*}
  - {user: app, vhost: prod, configure: "", write: .*, read: .*}
policies:
  - {name: ttl, vhost: prod, pattern: "^q", definition: {message-ttl: 1000}}
`
	digest := func(file string) string {
		t.Helper()
		s, err := Load([]string{"-config", writeConfig(t, file)}, envMap(nil))
		if err != nil {
			t.Fatal(err)
		}
		return s.AccessDigest()
	}
	want := digest(base)
	if len(want) != 64 {
		t.Fatalf("digest %q", want)
	}
	tests := []struct {
		name string
		file string
		same bool
	}{
		{"same file", base, true},
		{"other order", `
users:
  - {name: app, password: app}
  - {name: admin, password: s3cret, tags: [monitoring, administrator]}
vhosts: [prod, /]
permissions:
  - {user: app, vhost: prod, configure: "", write: .*, read: .*}
  - {user: admin, vhost: /, configure: .*, write: .*, read: .*}
policies:
  - {name: ttl, vhost: prod, pattern: "^q", definition: {message-ttl: 1000}}
`, true},
		{"other sections differ", base + "log: {level: debug}\nconsumer_timeout: 5000\n", true},
		{"a password differs", strings.Replace(base, "password: app", "password: App", 1), false},
		{"a permission differs", strings.Replace(base, `configure: ""`, "configure: .*", 1), false},
		{"a vhost more", strings.Replace(base, "[/, prod]", "[/, prod, dev]", 1), false},
		{"a policy differs", strings.Replace(base, "message-ttl: 1000", "message-ttl: 2000", 1), false},
		{"a tag less", strings.Replace(base, "[administrator, monitoring]", "[administrator]", 1), false},
	}
	for _, tt := range tests {
		if got := digest(tt.file); (got == want) != tt.same {
			t.Errorf("%s: digest equal %v, want %v", tt.name, got == want, tt.same)
		}
	}
	if strings.Contains(want, "s3cret") {
		t.Error("the digest shows a password")
	}
}

// The digest is keyed with the cluster name and secret: nodes of one cluster agree, and whoever
// reads it (monitoring users, /api/nodes) cannot check password guesses against it without the
// secret.
func TestAccessDigestKeyed(t *testing.T) {
	t.Chdir(t.TempDir())
	s, err := Load([]string{"-config", writeConfig(t, "users:\n  - {name: app, password: app}\n"+clusterFile)}, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	base := s.AccessDigest()
	if again := s.AccessDigest(); again != base {
		t.Fatalf("digest not stable: %s, %s", base, again)
	}
	for _, tc := range []struct {
		name   string
		change func(*Settings)
	}{
		{"another secret", func(s *Settings) { s.Cluster.Secret += "x" }},
		{"another cluster name", func(s *Settings) { s.Cluster.Name = "staging" }},
		// The key is length-prefixed: moving bytes between name and secret changes it.
		{"name and secret split elsewhere", func(s *Settings) {
			s.Cluster.Name, s.Cluster.Secret = s.Cluster.Name+"s", Secret(strings.TrimPrefix(s.Cluster.Secret.Reveal(), "s"))
		}},
	} {
		c := *s
		tc.change(&c)
		if got := c.AccessDigest(); got == base {
			t.Errorf("%s: same digest", tc.name)
		}
	}
}

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

package server

import (
	"os"
	"path/filepath"
	"testing"
)

// writeTree creates files (path relative to root -> content) under a new temporary root.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// The memory alarm's total is the smaller of the machine's RAM and the process's memory cgroup
// limit (issue 15 defect 5, issue 23 finding 5), read from a root directory the test supplies.
func TestTotalMemoryCgroup(t *testing.T) {
	const meminfo = "MemTotal:       16384000 kB\nMemFree:         1000000 kB\n"
	const ram = 16384000 << 10
	const v1Unlimited = "9223372036854771712\n"
	tests := []struct {
		name       string
		files      map[string]string
		want       uint64
		wantSource string
	}{
		{
			name: "no cgroup files: RAM",
			files: map[string]string{
				"proc/meminfo": meminfo,
			},
			want: ram, wantSource: "/proc/meminfo MemTotal",
		},
		{
			name: "v2 container with its own namespace: memory.max at the root",
			files: map[string]string{
				"proc/meminfo":              meminfo,
				"proc/self/cgroup":          "0::/\n",
				"sys/fs/cgroup/memory.max":  "1073741824\n",
				"sys/fs/cgroup/cgroup.type": "domain\n",
			},
			want: 1 << 30, wantSource: "cgroup v2 /sys/fs/cgroup/memory.max",
		},
		{
			name: "v2 unlimited: RAM",
			files: map[string]string{
				"proc/meminfo":     meminfo,
				"proc/self/cgroup": "0::/user.slice/session-1.scope\n",
				"sys/fs/cgroup/user.slice/session-1.scope/memory.max": "max\n",
				"sys/fs/cgroup/user.slice/memory.max":                 "max\n",
			},
			want: ram, wantSource: "/proc/meminfo MemTotal",
		},
		{
			name: "v2 pod limit above an unlimited container: the pod's",
			files: map[string]string{
				"proc/meminfo":     meminfo,
				"proc/self/cgroup": "0::/kubepods/pod1/ctr\n",
				"sys/fs/cgroup/kubepods/pod1/ctr/memory.max": "max\n",
				"sys/fs/cgroup/kubepods/pod1/memory.max":     "536870912\n",
				"sys/fs/cgroup/kubepods/memory.max":          "8589934592\n",
			},
			want: 512 << 20, wantSource: "cgroup v2 /sys/fs/cgroup/kubepods/pod1/memory.max",
		},
		{
			name: "v2 host path not visible (no cgroup namespace): the mounted root's",
			files: map[string]string{
				"proc/meminfo":             meminfo,
				"proc/self/cgroup":         "0::/system.slice/docker-abc.scope\n",
				"sys/fs/cgroup/memory.max": "268435456\n",
			},
			want: 256 << 20, wantSource: "cgroup v2 /sys/fs/cgroup/memory.max",
		},
		{
			name: "v2 limit above RAM: RAM",
			files: map[string]string{
				"proc/meminfo":             meminfo,
				"proc/self/cgroup":         "0::/\n",
				"sys/fs/cgroup/memory.max": "68719476736\n",
			},
			want: ram, wantSource: "/proc/meminfo MemTotal",
		},
		{
			name: "v1 docker container: memory.limit_in_bytes at the mounted root",
			files: map[string]string{
				"proc/meminfo":     meminfo,
				"proc/self/cgroup": "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/docker/abc\n",
				"sys/fs/cgroup/memory/memory.limit_in_bytes": "2147483648\n",
			},
			want: 2 << 30, wantSource: "cgroup v1 /sys/fs/cgroup/memory/memory.limit_in_bytes",
		},
		{
			name: "v1 unlimited (hybrid host): RAM",
			files: map[string]string{
				"proc/meminfo":     meminfo,
				"proc/self/cgroup": "4:memory:/process_api/x\n0::/\n",
				"sys/fs/cgroup/memory/process_api/x/memory.limit_in_bytes": v1Unlimited,
				"sys/fs/cgroup/memory/process_api/memory.limit_in_bytes":   v1Unlimited,
				"sys/fs/cgroup/memory/memory.limit_in_bytes":               v1Unlimited,
				"sys/fs/cgroup/memory.max":                                 "1048576\n", // not the memory controller's hierarchy
			},
			want: ram, wantSource: "/proc/meminfo MemTotal",
		},
		{
			name: "v1 nested: the smallest on the path",
			files: map[string]string{
				"proc/meminfo":     meminfo,
				"proc/self/cgroup": "4:memory:/a/b\n",
				"sys/fs/cgroup/memory/a/b/memory.limit_in_bytes": "4294967296\n",
				"sys/fs/cgroup/memory/a/memory.limit_in_bytes":   "3221225472\n",
				"sys/fs/cgroup/memory/memory.limit_in_bytes":     v1Unlimited,
			},
			want: 3 << 30, wantSource: "cgroup v1 /sys/fs/cgroup/memory/a/memory.limit_in_bytes",
		},
		{
			name: "no meminfo, a cgroup limit: the limit",
			files: map[string]string{
				"proc/self/cgroup":         "0::/\n",
				"sys/fs/cgroup/memory.max": "1073741824\n",
			},
			want: 1 << 30, wantSource: "cgroup v2 /sys/fs/cgroup/memory.max",
		},
		{
			name:  "nothing readable: unknown",
			files: map[string]string{"proc/self/cgroup": "0::/\n"},
			want:  0, wantSource: "",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, source := totalMemoryAt(writeTree(t, tc.files))
			if got != tc.want || source != tc.wantSource {
				t.Fatalf("totalMemoryAt = %d (%q), want %d (%q)", got, source, tc.want, tc.wantSource)
			}
		})
	}
}

// On this machine the total is known and never above the RAM.
func TestTotalMemoryHere(t *testing.T) {
	got, source := totalMemory()
	ram := memTotal("/proc/meminfo")
	if got == 0 || got > ram || source == "" {
		t.Fatalf("totalMemory() = %d (%q), RAM %d", got, source, ram)
	}
	t.Logf("total memory %d MiB from %s", got>>20, source)
}

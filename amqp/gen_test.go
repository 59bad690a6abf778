package amqp

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The committed generated files are what the generator produces from the
// committed spec: regenerating changes nothing.
func TestGeneratedCodeUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the generator with go run")
	}
	dir := t.TempDir()
	out, test := filepath.Join(dir, "methods_gen.go"), filepath.Join(dir, "methods_gen_test.go")
	cmd := exec.Command("go", "run", "./internal/gen", "-spec", "spec/amqp0-9-1.stripped.extended.xml", "-out", out, "-testout", test)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generator: %v\n%s", err, msg)
	}
	for gen, committed := range map[string]string{out: "methods_gen.go", test: "methods_gen_test.go"} {
		a, err := os.ReadFile(gen)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(committed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s is stale: run go generate ./amqp", committed)
		}
	}
}

package persistence

import (
	"bytes"
	"path/filepath"
	"testing"
)

// TestTrimMappedKeepsData: reclaiming the store's mapped pages (also right after writing, with
// dirty pages) loses nothing; the data is read from disk again.
func TestTrimMappedKeepsData(t *testing.T) {
	t.Parallel()
	if residentFileBytes() <= 0 {
		t.Fatal("RssFile not readable from /proc/self/status")
	}
	dir := t.TempDir()
	s := openT(t, dir)
	defer closeT(t, s)
	body := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 16<<10) } // value log
	b := &Batch{}
	for i := 1; i <= 200; i++ {
		b.Publishes = append(b.Publishes, Publish{Msg: &Message{ID: uint64(i), Body: body(i)}, Entries: []Entry{ent("q", uint64(i))}})
	}
	commitT(t, s, b)
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ {
		trimMapped(real+string(filepath.Separator), 0)
		for i := 1; i <= 200; i++ {
			m, err := readMessage(s, uint64(i))
			if err != nil || !bytes.Equal(m.Body, body(i)) {
				t.Fatalf("round %d: message %d after trimming: %v", round, i, err)
			}
		}
	}
}

package server

import (
	"fmt"
	"net"
	"strings"
	"testing"
)

func TestCheckRabbitHash(t *testing.T) {
	h := HashPassword([4]byte{1, 2, 3, 4}, "s3cret")
	if !checkRabbitHash(h, "s3cret") {
		t.Fatal("hash does not verify its own password")
	}
	if checkRabbitHash(h, "wrong") || checkRabbitHash("not base64!", "s3cret") {
		t.Fatal("hash accepted a wrong password or a malformed hash")
	}
	// Exported by RabbitMQ 3.10.8 (rabbitmqctl add_user hashtest s3cret; export_definitions).
	const fromRabbit = "Y1SROwflvYZBvewJ307LO1IQgMieaa+wNFFMLHPMCED6rgU6"
	if !checkRabbitHash(fromRabbit, "s3cret") || checkRabbitHash(fromRabbit, "guest") {
		t.Fatal("RabbitMQ's own hash does not verify")
	}
}

func TestConfirmTrackerFoldsRuns(t *testing.T) {
	// Settle order 2, 1, 3(nack), 5, 4 must produce: ack multiple up to 2, nack 3, ack multiple up to 5.
	var tr confirmTracker
	for seq := uint64(1); seq <= 5; seq++ {
		tr.add(seq)
	}
	var got []string
	emit := func(seq uint64, nack bool) {
		tr.settle(seq, nack, func(ops []confirmOp) {
			for _, op := range ops {
				s := fmt.Sprintf("ack %d", op.tag)
				if op.nack {
					s = fmt.Sprintf("nack %d", op.tag)
				}
				if op.multiple {
					s += " multiple"
				}
				got = append(got, s)
			}
		})
	}
	emit(2, false)
	emit(1, false)
	emit(3, true)
	emit(5, false)
	emit(4, false)
	emit(4, false) // a second settle of the same tag is ignored
	want := []string{"ack 2 multiple", "nack 3", "ack 5 multiple"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("frames = %v, want %v", got, want)
	}
}

// PLAIN's authorization identity must be empty, as in RabbitMQ: a login cannot ask to act as
// another user (nor name itself).
func TestPlainRefusesAuthzid(t *testing.T) {
	s := startTestServer(t, nil)
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	for _, tc := range []struct {
		response string
		ok       bool
	}{
		{"\x00guest\x00guest", true},
		{"admin\x00guest\x00guest", false},
		{"guest\x00guest\x00guest", false},
		{"\x00guest\x00wrong", false},
	} {
		_, err := s.authenticate("PLAIN", tc.response, "", local, nil)
		if (err == nil) != tc.ok {
			t.Errorf("PLAIN %q: err %v, want ok=%v", tc.response, err, tc.ok)
		}
	}
}

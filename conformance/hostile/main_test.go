package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestList(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"-list"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"declared-128mib-body-16-channels [issue 23 finding 1]", "alarm-blocked-publisher-dies [issue 23 finding 2]", "get-recover-loop-unread [issue 23 finding 3]", "  sends:  ", "  expect: "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-list output lacks %q", want)
		}
	}
}

func TestBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{"-alarm-cmd", "true"},                            // without -clear-alarm-cmd
		{"-pid", "1", "-rss-cmd", "echo 1"},               // both RSS sources
		{"-run", "("},                                     // bad pattern
		{"-url", "amqps://guest:guest@127.0.0.1/"},        // raw cases need plain TCP
		{"-url", "amqp://127.0.0.1:1/", "-timeout", "2s"}, // nothing listening: exit 2, not a hang
		{"-url", "amqp://guest:guest@192.0.2.1:5672/"},    // not loopback without -allow-remote
	} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stdout %q)", args, code, out.String())
		}
	}
}

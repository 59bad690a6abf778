package amqp

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

var allProps = Properties{
	ContentType:     "application/json",
	ContentEncoding: "gzip",
	Headers:         Table{"x-retries": int64(3), "nested": Table{"a": []any{"b", int32(2)}}},
	DeliveryMode:    2,
	Priority:        9,
	CorrelationID:   "corr",
	ReplyTo:         "amq.rabbitmq.reply-to",
	Expiration:      "1500",
	MessageID:       "id-1",
	Timestamp:       time.Unix(1700000000, 0),
	Type:            "type",
	UserID:          "guest",
	AppID:           "app",
	ClusterID:       "cluster",
}

func propsEqual(a, b Properties) bool {
	if !a.Timestamp.Equal(b.Timestamp) {
		return false
	}
	a.Timestamp, b.Timestamp = time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}

func TestContentHeaderEachProperty(t *testing.T) {
	tests := []struct {
		name string
		flag uint16
		set  func(p *Properties)
	}{
		{"content-type", FlagContentType, func(p *Properties) { p.ContentType = allProps.ContentType }},
		{"content-encoding", FlagContentEncoding, func(p *Properties) { p.ContentEncoding = allProps.ContentEncoding }},
		{"headers", FlagHeaders, func(p *Properties) { p.Headers = allProps.Headers }},
		{"empty headers", FlagHeaders, func(p *Properties) { p.Headers = Table{} }},
		{"delivery-mode", FlagDeliveryMode, func(p *Properties) { p.DeliveryMode = 2 }},
		{"priority", FlagPriority, func(p *Properties) { p.Priority = 9 }},
		{"correlation-id", FlagCorrelationID, func(p *Properties) { p.CorrelationID = allProps.CorrelationID }},
		{"reply-to", FlagReplyTo, func(p *Properties) { p.ReplyTo = allProps.ReplyTo }},
		{"expiration", FlagExpiration, func(p *Properties) { p.Expiration = allProps.Expiration }},
		{"message-id", FlagMessageID, func(p *Properties) { p.MessageID = allProps.MessageID }},
		{"timestamp", FlagTimestamp, func(p *Properties) { p.Timestamp = allProps.Timestamp }},
		{"timestamp epoch", FlagTimestamp, func(p *Properties) { p.Timestamp = time.Unix(0, 0) }},
		{"type", FlagType, func(p *Properties) { p.Type = allProps.Type }},
		{"user-id", FlagUserID, func(p *Properties) { p.UserID = allProps.UserID }},
		{"app-id", FlagAppID, func(p *Properties) { p.AppID = allProps.AppID }},
		{"cluster-id", FlagClusterID, func(p *Properties) { p.ClusterID = allProps.ClusterID }},
		{"all", 0xfffc, func(p *Properties) { *p = allProps }},
		{"none", 0, func(p *Properties) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Properties
			tt.set(&p)
			payload := AppendContentHeader(nil, ClassBasic, 12345, &p)
			if got := uint16(payload[12])<<8 | uint16(payload[13]); got != tt.flag {
				t.Fatalf("flags %#04x, want %#04x", got, tt.flag)
			}
			h, err := DecodeContentHeader(payload)
			if err != nil {
				t.Fatal(err)
			}
			if h.ClassID != ClassBasic || h.BodySize != 12345 || h.Flags != tt.flag || !propsEqual(h.Props, p) {
				t.Fatalf("decoded %+v, want %+v", h, p)
			}
			if re := AppendContentHeader(nil, h.ClassID, h.BodySize, &h.Props); !bytes.Equal(re, payload) {
				t.Fatalf("re-encoded % x, want % x", re, payload)
			}
			s, err := ScanContentHeader(payload)
			if err != nil {
				t.Fatal(err)
			}
			checkSummary(t, s, h, payload)
		})
	}
}

func checkSummary(t *testing.T, s HeaderSummary, h ContentHeader, payload []byte) {
	t.Helper()
	if s.ClassID != h.ClassID || s.BodySize != h.BodySize || s.DeliveryMode != h.Props.DeliveryMode ||
		s.Priority != h.Props.Priority || s.Expiration != h.Props.Expiration || s.UserID != h.Props.UserID {
		t.Fatalf("summary %+v disagrees with %+v", s, h)
	}
	if (s.HeadersRaw != nil) != (h.Flags&FlagHeaders != 0) {
		t.Fatalf("HeadersRaw presence wrong: %v", s.HeadersRaw)
	}
	if s.HasUserID != (h.Flags&FlagUserID != 0) {
		t.Fatalf("HasUserID = %v with flags %#x", s.HasUserID, h.Flags)
	}
	if s.HeadersRaw != nil {
		tbl, n, err := DecodeTable(s.HeadersRaw)
		if err != nil || n != len(s.HeadersRaw) || !tbl.Equal(h.Props.Headers) {
			t.Fatalf("HeadersRaw decodes to %v, %d, %v", tbl, n, err)
		}
		// It aliases the payload rather than copying it.
		if &s.HeadersRaw[0] != &payload[14+len(h.Props.ContentType)+1+len(h.Props.ContentEncoding)+1-
			boolInt(h.Flags&FlagContentType == 0)-boolInt(h.Flags&FlagContentEncoding == 0)] {
			t.Fatal("HeadersRaw does not alias the payload")
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestAppendContentHeaderNil(t *testing.T) {
	got := AppendContentHeader([]byte{0xaa}, ClassBasic, 1, nil)
	want := []byte{0xaa, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}
	if !bytes.Equal(got, want) {
		t.Fatalf("got % x", got)
	}
}

func TestContentHeaderErrors(t *testing.T) {
	valid := AppendContentHeader(nil, ClassBasic, 10, &allProps)
	tests := []struct {
		name    string
		payload []byte
	}{
		{"empty", nil},
		{"short fixed part", valid[:13]},
		{"continuation flag", []byte{0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
		{"unknown flag bit 1", []byte{0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}},
		{"trailing bytes", append(AppendContentHeader(nil, ClassBasic, 0, nil), 9, 9)},
		{"trailing byte after all", append(append([]byte(nil), valid...), 0)},
		{"bad headers table", append([]byte{0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0}, tbl(entry("k", 'Z'))...)},
		{"headers length past end", []byte{0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0x80, 0, 0, 0}},
		{"shortstr past end", []byte{0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 200, 'a'}},
	}
	for i := 14; i < len(valid); i++ {
		tests = append(tests, struct {
			name    string
			payload []byte
		}{"prefix " + itoa(uint16(i)), valid[:i]})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeContentHeader(tt.payload)
			var e *Error
			if !errors.As(err, &e) || e.Code != FrameError {
				t.Fatalf("DecodeContentHeader: %v, want a FrameError", err)
			}
			_, err = ScanContentHeader(tt.payload)
			if !errors.As(err, &e) || e.Code != FrameError {
				t.Fatalf("ScanContentHeader: %v, want a FrameError", err)
			}
		})
	}
}

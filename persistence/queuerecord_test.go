package persistence

import (
	"reflect"
	"testing"
)

// A queue record's epoch is an optional trailing field: records written before it existed still
// decode (epoch 0), and a value with bytes after it is corrupt.
func TestQueueRecordEpochEncoding(t *testing.T) {
	key := queueRecKey("/", "q")
	old := appendBytes([]byte{flagAutoDelete}, []byte("args")) // the encoding before epochs
	tests := []struct {
		name    string
		value   []byte
		want    QueueRecord
		corrupt bool
	}{
		{"before epochs", old, QueueRecord{VHost: "/", Name: "q", AutoDelete: true, Args: []byte("args")}, false},
		{"epoch 0 writes the old form", encodeQueue(QueueRecord{VHost: "/", Name: "q", AutoDelete: true, Args: []byte("args")}),
			QueueRecord{VHost: "/", Name: "q", AutoDelete: true, Args: []byte("args")}, false},
		{"with epoch", encodeQueue(QueueRecord{VHost: "/", Name: "q", Args: []byte("a"), Epoch: 1 << 40}),
			QueueRecord{VHost: "/", Name: "q", Args: []byte("a"), Epoch: 1 << 40}, false},
		{"trailing garbage", append(encodeQueue(QueueRecord{VHost: "/", Name: "q", Epoch: 5}), 1), QueueRecord{}, true},
		{"truncated epoch", append(append([]byte(nil), old...), 0x80), QueueRecord{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeQueue(key, tt.value)
			if tt.corrupt {
				if err == nil {
					t.Fatalf("decoded %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

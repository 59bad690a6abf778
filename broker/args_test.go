package broker

import (
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
)

func TestParseQueueArgs(t *testing.T) {
	tests := []struct {
		name    string
		args    amqp.Table
		wantErr string // substring of the 406 text; "" = valid
		check   func(t *testing.T, s queueSpec)
	}{
		{name: "none", args: nil, check: func(t *testing.T, s queueSpec) {
			if s.opts.MessageTTL >= 0 || s.opts.MaxLength >= 0 || s.opts.DeliveryLimit >= 0 {
				t.Errorf("limits should be off: %+v", s.opts)
			}
		}},
		{name: "ttl int32", args: amqp.Table{"x-message-ttl": int32(1500)}, check: func(t *testing.T, s queueSpec) {
			if s.opts.MessageTTL != 1500*time.Millisecond {
				t.Errorf("ttl = %v", s.opts.MessageTTL)
			}
		}},
		{name: "ttl negative", args: amqp.Table{"x-message-ttl": int64(-1)}, wantErr: "value_negative"},
		{name: "ttl string", args: amqp.Table{"x-message-ttl": "10"}, wantErr: "expected integer, got longstr"},
		{name: "expires zero", args: amqp.Table{"x-expires": int64(0)}, wantErr: "value_zero"},
		// Found by the hostile-client review: milliseconds beyond RabbitMQ's 2^32-1 overflowed
		// time.Duration and deleted the queue within a second.
		{name: "expires too large", args: amqp.Table{"x-expires": int64(76480200929599801)}, wantErr: "{value_too_large,76480200929599801}"},
		{name: "expires max", args: amqp.Table{"x-expires": int64(4294967295)}, check: func(t *testing.T, s queueSpec) {
			if s.expires != 4294967295*time.Millisecond {
				t.Errorf("expires = %v", s.expires)
			}
		}},
		{name: "ttl too large", args: amqp.Table{"x-message-ttl": int64(4294967296)}, wantErr: "value_too_large"},
		{name: "redelivery delay too large", args: amqp.Table{"x-redelivery-delay": int64(1) << 62}, wantErr: "value_too_large"},
		{name: "redelivery max delay too large", args: amqp.Table{"x-redelivery-max-delay": int64(1) << 40}, wantErr: "value_too_large"},
		{name: "delivery limit negative", args: amqp.Table{"x-delivery-limit": int64(-1)}, wantErr: "value_negative"},
		{name: "overflow", args: amqp.Table{"x-overflow": "reject-publish-dlx", "x-max-length": int64(3)}, check: func(t *testing.T, s queueSpec) {
			if s.opts.Overflow != queue.RejectPublishDLX || s.opts.MaxLength != 3 {
				t.Errorf("opts = %+v", s.opts)
			}
		}},
		{name: "overflow unknown", args: amqp.Table{"x-overflow": "drop-tail"}, wantErr: "invalid_overflow"},
		{name: "dlrk without dlx", args: amqp.Table{"x-dead-letter-routing-key": "k"}, wantErr: "no_dlx"},
		{name: "dlx and dlrk", args: amqp.Table{"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "k"}, check: func(t *testing.T, s queueSpec) {
			if s.dlx != "dlx" || s.dlrk == nil || *s.dlrk != "k" {
				t.Errorf("dlx=%q dlrk=%v", s.dlx, s.dlrk)
			}
		}},
		{name: "redelivery delay and backoff", args: amqp.Table{"x-redelivery-delay": int32(100), "x-redelivery-backoff": 2.0, "x-redelivery-max-delay": int32(1000)}, check: func(t *testing.T, s queueSpec) {
			if s.opts.RedeliveryDelay != 100*time.Millisecond || s.opts.RedeliveryBackoff != 2 || s.opts.RedeliveryMaxDelay != time.Second {
				t.Errorf("opts = %+v", s.opts)
			}
		}},
		{name: "backoff below one", args: amqp.Table{"x-redelivery-backoff": 0.5}, wantErr: "value_below_one"},
		{name: "quorum", args: amqp.Table{"x-queue-type": "quorum"}, check: func(t *testing.T, s queueSpec) {
			if !s.quorum {
				t.Error("quorum not set")
			}
		}},
		{name: "unknown type unsupported", args: amqp.Table{"x-queue-type": "fancy"}, wantErr: "unsupported_queue_type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := parseQueueArgs(tt.args)
			if tt.wantErr != "" {
				if err == nil || err.Code != amqp.PreconditionFailed || !strings.Contains(err.Text, tt.wantErr) {
					t.Fatalf("err = %v, want 406 containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			tt.check(t, spec)
		})
	}
}

package broker

import (
	"math"
	"testing"
	"time"
)

func TestCombinePrecedence(t *testing.T) {
	spec, aerr := parseQueueArgs(nil)
	if aerr != nil {
		t.Fatal(aerr)
	}
	pol, _, err := CompilePolicy("p", PolicyDef{Name: "p", Pattern: ".", Definition: map[string]any{
		"message-ttl": 1000, "expires": 5000, "max-length": 10, "max-length-bytes": 100, "delivery-limit": 3,
		"overflow": "reject-publish", "dead-letter-exchange": "pdlx", "dead-letter-routing-key": "pk",
		"ha-mode": "all",
	}})
	if err != nil {
		t.Fatal(err)
	}
	e := combine(spec, nil, pol)
	if e.opts.MessageTTL != time.Second || e.opts.MaxLength != 10 || e.opts.MaxLengthBytes != 100 || e.opts.DeliveryLimit != 3 ||
		e.expires != 5*time.Second || e.dl == nil || e.dl.exchange != "pdlx" || *e.dl.routingKey != "pk" || e.policy != "p" {
		t.Fatalf("policy only: %+v dl %+v", e, e.dl)
	}
	args := map[string]any{"x-message-ttl": int64(500), "x-expires": int64(9000), "x-max-length": int64(20), "x-max-length-bytes": int64(50),
		"x-delivery-limit": int64(1), "x-overflow": "drop-head", "x-dead-letter-exchange": "adlx"}
	spec, aerr = parseQueueArgs(args)
	if aerr != nil {
		t.Fatal(aerr)
	}
	e = combine(spec, args, pol)
	// Lower wins for the numeric limits; the argument wins for overflow and dead-lettering
	// (the policy's routing key still fills in the one the arguments lack).
	if e.opts.MessageTTL != 500*time.Millisecond || e.opts.MaxLength != 10 || e.opts.MaxLengthBytes != 50 || e.opts.DeliveryLimit != 1 ||
		e.expires != 5*time.Second || e.opts.Overflow != 0 || e.dl.exchange != "adlx" || *e.dl.routingKey != "pk" {
		t.Fatalf("arguments and policy: %+v dl %+v", e, e.dl)
	}
	for _, bad := range []map[string]any{{"message-ttl": -1}, {"expires": int64(76480200929599801)}, {"redelivery-delay": int64(1) << 40}, {"expires": 0}, {"overflow": "drop-tail"}, {"dead-letter-exchange": 5}, {"no-such-key": 1}, {}} {
		if _, _, err := CompilePolicy("p", PolicyDef{Name: "p", Pattern: ".", Definition: bad}); err == nil {
			t.Errorf("policy definition %v accepted", bad)
		}
	}
}

// Definition values a policy cannot use are refused with the key named.
func TestCompilePolicyRejects(t *testing.T) {
	for _, def := range []map[string]any{
		{"redelivery-backoff": math.NaN()},
		{"redelivery-backoff": 0.5},
		{"overflow": "drop-tail"},
	} {
		if _, _, err := CompilePolicy("policies[0]", PolicyDef{Name: "p", Pattern: ".*", Definition: def}); err == nil {
			t.Errorf("definition %v accepted", def)
		}
	}
}

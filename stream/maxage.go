package stream

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// ErrInvalidMaxAge is returned by ParseMaxAge; RabbitMQ answers 406 PRECONDITION_FAILED
// ("Invalid max-age") for such a value.
var ErrInvalidMaxAge = errors.New("invalid max-age")

// maxAgeUnits are RabbitMQ's units for x-max-age: a year is 365 days and a month 30.
var maxAgeUnits = map[string]time.Duration{
	"Y": 365 * 24 * time.Hour,
	"M": 30 * 24 * time.Hour,
	"D": 24 * time.Hour,
	"h": time.Hour,
	"m": time.Minute,
	"s": time.Second,
}

// ParseMaxAge parses an x-max-age (or max-age policy) value as RabbitMQ does: a positive
// decimal integer immediately followed by exactly one unit among Y, M, D, h, m, s ("7D",
// "12h", "30m"). No sign, no space, no fraction, no unitless number, no zero.
func ParseMaxAge(s string) (time.Duration, error) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	unit, ok := maxAgeUnits[s[i:]]
	if i == 0 || !ok {
		return 0, fmt.Errorf("%w: %q", ErrInvalidMaxAge, s)
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/int64(unit) {
		return 0, fmt.Errorf("%w: %q", ErrInvalidMaxAge, s)
	}
	return time.Duration(n) * unit, nil
}

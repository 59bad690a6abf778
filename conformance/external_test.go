//go:build conformance_external

package conformance

import "errors"

// startWarren is unavailable in conformance_external builds: the broker must be given by URL.
func startWarren() (string, func(), error) {
	return "", nil, errors.New("built with -tags conformance_external: pass -amqp-url or AMQP_URL")
}

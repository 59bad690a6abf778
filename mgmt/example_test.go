package mgmt_test

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/warrenmq/warren/mgmt"
)

// The wiring serves the API and the metrics on their own listeners (management.listen and
// prometheus.listen), over an adapter from the broker core to mgmt.Broker.
func ExampleNewHandler() {
	var core mgmt.Broker // the adapter over the broker core
	api := &http.Server{
		Addr:              "0.0.0.0:15672",
		Handler:           mgmt.NewHandler(core, mgmt.Options{Logger: slog.Default()}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	metrics := &http.Server{
		Addr:              "0.0.0.0:15692",
		Handler:           mgmt.NewMetricsHandler(core),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go api.ListenAndServe()     // or ListenAndServeTLS with management.tls.cert_file/key_file
	go metrics.ListenAndServe() // errors other than http.ErrServerClosed are start-up failures
}

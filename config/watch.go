package config

import (
	"os"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/viper"
)

// WatchQuiet is how long a watched file must go unchanged before Watch reports it: long enough
// for an editor or a copy to finish writing (a truncation followed by the new text is one change),
// short enough that a saved file applies at once to a person looking.
const WatchQuiet = 300 * time.Millisecond

// Watch reports changes to path on changed once the file has stopped changing for quiet, using
// viper's file watch (which follows editors that replace the file by renaming, and symlinked
// files). Every change restarts the wait, so a file being written is never reported half-done;
// a burst of writes is reported once, and changed holds one pending report. The watch ends when
// the file is removed; stop makes later events go nowhere.
func Watch(path string, quiet time.Duration, changed chan<- struct{}) (stop func(), err error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	var (
		mu      sync.Mutex
		timer   *time.Timer
		gen     uint64 // counts changes; only the timer of the latest one reports
		stopped bool
	)
	v := viper.New()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	_ = v.ReadInConfig() // the watch needs a read; errors are Load's to report
	v.OnConfigChange(func(fsnotify.Event) {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		gen++
		g := gen
		if timer != nil {
			timer.Stop()
		}
		timer = time.AfterFunc(quiet, func() {
			mu.Lock()
			defer mu.Unlock()
			if stopped || g != gen {
				return // a later change restarted the wait
			}
			select {
			case changed <- struct{}{}:
			default:
			}
		})
	})
	v.WatchConfig()
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		if timer != nil {
			timer.Stop()
		}
	}, nil
}

package config

import (
	"os"
	"sync/atomic"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/viper"
)

// Watch reports changes to path on changed, using viper's file watch (which follows editors
// that replace the file by renaming, and symlinked files). A burst of writes is reported once:
// changed holds one pending report. The watch ends when the file is removed; stop makes later
// events go nowhere.
func Watch(path string, changed chan<- struct{}) (stop func(), err error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	var stopped atomic.Bool
	v := viper.New()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	_ = v.ReadInConfig() // the watch needs a read; errors are Load's to report
	v.OnConfigChange(func(fsnotify.Event) {
		if stopped.Load() {
			return
		}
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	v.WatchConfig()
	return func() { stopped.Store(true) }, nil
}

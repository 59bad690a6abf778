package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"warren/server"
)

// runPasswdCommand prints a rabbit_password_hashing_sha256 hash of the password given as the
// argument, or read as the first line of stdin, for users[].password_hash.
func runPasswdCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var pass string
	switch len(args) {
	case 0:
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			fmt.Fprintln(stderr, "warren: passwd:", err)
			return 1
		}
		pass = strings.TrimRight(line, "\r\n")
	case 1:
		if args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
			fmt.Fprintln(stderr, "Usage: warren passwd [PASSWORD]   (without PASSWORD, the first line of stdin)")
			return 0
		}
		pass = args[0]
	default:
		fmt.Fprintln(stderr, "warren: passwd: expected one password (or none, to read it from stdin)")
		return 1
	}
	if pass == "" {
		fmt.Fprintln(stderr, "warren: passwd: empty password")
		return 1
	}
	fmt.Fprintln(stdout, server.NewPasswordHash(pass))
	return 0
}

// runDefinitionsCommand runs `warren definitions import|export`.
func runDefinitionsCommand(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	usage := "Usage: warren definitions import [-o FILE] DEFINITIONS.json\n       warren definitions export [-config FILE] [-o FILE]"
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 1
	}
	var err error
	switch args[0] {
	case "import":
		err = definitionsImport(args[1:], stdout)
	case "export":
		err = definitionsExport(args[1:], lookupEnv, stdout)
	case "-h", "-help", "--help":
		fmt.Fprintln(stderr, usage)
		return 0
	default:
		err = fmt.Errorf("unknown subcommand %q", args[0])
	}
	if err != nil {
		fmt.Fprintln(stderr, "warren: definitions:", err)
		return 1
	}
	return 0
}

// outputFlag parses [-o FILE] and returns where to write.
func outputFlag(fs *flag.FlagSet) *string {
	fs.SetOutput(io.Discard)
	return fs.String("o", "", "write to FILE instead of stdout")
}

func writeOut(path string, stdout io.Writer, b []byte) error {
	if path == "" {
		_, err := stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// definitionsImport reads a RabbitMQ definitions file, checks it as the broker would, and writes
// the equivalent config.yaml sections.
func definitionsImport(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("import", flag.ContinueOnError)
	out := outputFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("import needs one definitions file")
	}
	path := fs.Arg(0)
	defs, err := readDefinitions(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	check := server.DefaultConfig()
	check.Users, check.VHosts, check.Permissions = nil, nil, nil
	if err := defs.apply(&check); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(check.VHosts) == 0 {
		check.VHosts = []server.VHost{{Name: "/"}}
	}
	if err := check.Validate(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	// Vhost limits travel as parameters in RabbitMQ's files; in config.yaml they sit on the vhost.
	for _, p := range defs.Parameters {
		for i := range defs.VHosts {
			if defs.VHosts[i].Name == p.VHost {
				defs.VHosts[i].Limits = vhostLimits(p.Value)
			}
		}
	}
	for i := range defs.VHosts {
		if d, ok := defs.VHosts[i].Metadata["description"].(string); ok && defs.VHosts[i].Description == "" {
			defs.VHosts[i].Description = d
		}
	}
	body, err := yaml.Marshal(plainYAML(defs))
	if err != nil {
		return err
	}
	header := fmt.Sprintf("# Imported from %s (%s) by `warren definitions import` on %s.\n"+
		"# Paste these sections into config.yaml (they replace the default guest user, vhost and\n"+
		"# permissions), or point load_definitions at the JSON file instead.\n",
		filepath.Base(path), versionOf(defs), time.Now().UTC().Format(time.DateOnly))
	return writeOut(*out, stdout, append([]byte(header), body...))
}

func versionOf(d *definitions) string {
	if d.RabbitMQVersion != "" {
		return "RabbitMQ " + d.RabbitMQVersion
	}
	if d.RabbitVersion != "" {
		return "RabbitMQ " + d.RabbitVersion
	}
	return "no version"
}

// plainYAML turns the decoded JSON numbers inside maps into numbers YAML writes unquoted.
func plainYAML(d *definitions) *definitions {
	cp := *d
	fix := func(m map[string]any) map[string]any {
		if m == nil {
			return nil
		}
		out := map[string]any{}
		for k, v := range m {
			out[k] = plainValue(v)
		}
		return out
	}
	cp.Users = append([]defUser(nil), d.Users...)
	for i := range cp.Users {
		cp.Users[i].Limits = fix(cp.Users[i].Limits)
		if len(cp.Users[i].Limits) == 0 {
			cp.Users[i].Limits = nil
		}
	}
	cp.VHosts = append([]defVHost(nil), d.VHosts...)
	for i := range cp.VHosts {
		cp.VHosts[i].Limits = fix(cp.VHosts[i].Limits)
	}
	cp.Policies = append([]defPolicy(nil), d.Policies...)
	for i := range cp.Policies {
		cp.Policies[i].Definition = fix(cp.Policies[i].Definition)
	}
	cp.Queues = append([]defQueue(nil), d.Queues...)
	for i := range cp.Queues {
		cp.Queues[i].Arguments = fix(cp.Queues[i].Arguments)
	}
	cp.Exchanges = append([]defExchange(nil), d.Exchanges...)
	for i := range cp.Exchanges {
		cp.Exchanges[i].Arguments = fix(cp.Exchanges[i].Arguments)
	}
	cp.Bindings = append([]defBinding(nil), d.Bindings...)
	for i := range cp.Bindings {
		cp.Bindings[i].Arguments = fix(cp.Bindings[i].Arguments)
	}
	return &cp
}

func plainValue(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = plainValue(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = plainValue(e)
		}
		return out
	}
	return v
}

// definitionsExport writes the configuration (config.yaml, WARREN_* variables, load_definitions)
// as a RabbitMQ definitions file that `rabbitmqctl import_definitions` reads.
func definitionsExport(args []string, lookupEnv func(string) (string, bool), stdout io.Writer) error {
	var out string
	var rest []string
	for i := 0; i < len(args); i++ {
		if args[i] == "-o" && i+1 < len(args) {
			out = args[i+1]
			i++
			continue
		}
		rest = append(rest, args[i])
	}
	cfg, err := loadConfig(rest, lookupEnv)
	if err != nil {
		return err
	}
	defs, err := exportDefinitions(&cfg.Server)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(defs, "", "  ")
	if err != nil {
		return err
	}
	return writeOut(out, stdout, append(b, '\n'))
}

// watchFile reports changes to path on changed, using viper's file watch (which follows editors
// that replace the file by renaming, and symlinked files). A burst of writes is reported once:
// changed holds one pending report. The watch ends when the file is removed; stop makes later
// events go nowhere.
func watchFile(path string, changed chan<- struct{}) (stop func(), err error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	var stopped atomic.Bool
	v := viper.New()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	_ = v.ReadInConfig() // the watch needs a read; errors are loadConfig's to report
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

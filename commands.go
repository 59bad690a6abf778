package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/warrenmq/warren/config"
	"github.com/warrenmq/warren/server"
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
	b, err := config.ImportDefinitions(fs.Arg(0), time.Now())
	if err != nil {
		return err
	}
	return writeOut(*out, stdout, b)
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
	cfg, err := config.Load(rest, lookupEnv)
	if err != nil {
		return err
	}
	b, err := config.ExportDefinitions(cfg)
	if err != nil {
		return err
	}
	return writeOut(out, stdout, b)
}

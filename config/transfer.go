package config

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/warrenmq/warren/server"
)

// ImportDefinitions reads a RabbitMQ definitions file (rabbitmqctl export_definitions), checks
// it as the broker would, and returns the equivalent config.yaml sections with a header comment
// naming the file, its RabbitMQ version and the date now.
func ImportDefinitions(path string, now time.Time) ([]byte, error) {
	defs, err := readDefinitions(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w%s", path, err, definitionsLine(path, err))
	}
	check := server.DefaultConfig()
	check.Users, check.VHosts, check.Permissions = nil, nil, nil
	if err := defs.apply(&check); err != nil {
		return nil, fmt.Errorf("%s: %w%s", path, err, definitionsLine(path, err))
	}
	if len(check.VHosts) == 0 {
		check.VHosts = []server.VHost{{Name: "/"}}
	}
	if err := check.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
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
		return nil, fmt.Errorf("%s: writing YAML: %w", path, err)
	}
	header := fmt.Sprintf("# Imported from %s (%s) by `warren definitions import` on %s.\n"+
		"# Paste these sections into config.yaml (they replace the default guest user, vhost and\n"+
		"# permissions), or point load_definitions at the JSON file instead.\n",
		filepath.Base(path), versionOf(defs), now.UTC().Format(time.DateOnly))
	return append([]byte(header), body...), nil
}

// ExportDefinitions renders the settings' users, vhosts, permissions, policies and topology as
// a RabbitMQ definitions JSON document that `rabbitmqctl import_definitions` reads. Plain-text
// passwords are written as fresh salted rabbit_password_hashing_sha256 hashes.
func ExportDefinitions(s *Settings) ([]byte, error) {
	defs, err := exportDefinitions(&s.Server)
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(defs, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding definitions: %w", err)
	}
	return append(b, '\n'), nil
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

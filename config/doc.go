// Package config turns Warren's configuration sources into typed settings: config.yaml (or the
// file given with -config), WARREN_* environment variables, command-line flags and RabbitMQ
// definitions files (load_definitions, `warren definitions import/export`). Load returns a
// *Settings: a server.Config for the broker plus what only main uses (logging, the pprof
// endpoint). Nothing outside this package sees YAML, key paths or json.Number.
//
// Precedence, lowest first: built-in defaults (Default), the file, the environment, the flags;
// load_definitions is merged last. Every error names the key and where its value came from: the
// file and line, the environment variable, or the flag. Unknown keys are errors.
//
// Watch reports changes to the file once it has been quiet for WatchQuiet, so that a file being
// written is never read half-done; CheckReload refuses a reload that would turn an emptied file
// into the defaults or remove every user or every vhost.
//
// # Adding a key or a section
//
// A key is one entry in the keys table in config.go; that entry is the only list of keys. For a
// new section such as management.listen:
//
//  1. Add a field to Settings (or to server.Config if the broker itself reads it), for example
//     Settings.ManagementListen, and its default in Default.
//  2. Add the key to keys, e.g. addrKey("management.listen", true, func(s *Settings) *string {
//     return &s.ManagementListen }). Helpers cover the common kinds: addrKey for host:port,
//     toString, toBool, toIntRange and toFloat inside a custom set func, sectionKey for a list
//     of records.
//  3. Add the key with its default value and a comment to the shipped config.yaml
//     (TestDefaultConfigFile fails until every key is there with its default).
//
// The section name ("management"), the environment variable (WARREN_MANAGEMENT_LISTEN), the
// unknown-key check, the file line in errors and the -h listing all follow from the key's name.
package config

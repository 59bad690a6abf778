// Package ctl is `warren ctl`: a command-line client of Warren's management HTTP API in the
// spirit of rabbitmqctl (status, list_queues, purge_queue, ...). It only speaks the RabbitMQ
// management API, so it also works against RabbitMQ.
package ctl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Exit codes, as rabbitmqctl's (sysexits).
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 64
	exitUnavailable = 69
	exitNoPerm      = 77
)

// Environment variables that supply the flags' defaults.
const (
	envURL      = "WARREN_CTL_URL"
	envUser     = "WARREN_CTL_USER"
	envPassword = "WARREN_CTL_PASSWORD"
	// envListen is the management listener of the broker's own configuration; when set and no
	// URL is given, ctl talks to it.
	envListen = "WARREN_MANAGEMENT_LISTEN"
)

const usage = `Usage: warren ctl [flags] COMMAND [ARGS] [flags]

Commands:
  status                          node status: version, uptime, listeners, memory, disk, alarms, totals
  cluster_status                  cluster name, nodes, and on a Warren cluster the Raft leader, term
                                  and each node's applied index and configuration digest match
  list_queues [COLUMN...]         default columns: name messages
  list_exchanges [COLUMN...]      default columns: name type
  list_bindings [COLUMN...]       default columns: source destination destination_type routing_key arguments
  list_connections [COLUMN...]    default columns: name user peer_host peer_port state
  list_channels [COLUMN...]       default columns: name user consumer_count messages_unacknowledged
  list_consumers [COLUMN...]      default columns: queue.name channel_details.name consumer_tag ack_required prefetch_count active
  list_vhosts [COLUMN...]         default columns: name messages
  list_users [COLUMN...]          default columns: name tags
  list_permissions [COLUMN...]    default columns: user vhost configure write read (all vhosts)
  list_policies [COLUMN...]       default columns: vhost name pattern apply-to definition priority
  purge_queue QUEUE               remove the ready messages of a queue
  delete_queue QUEUE              delete a queue (--if-empty, --if-unused)
  close_connection NAME [REASON]  close a client connection (NAME as list_connections shows it)
  export_definitions [FILE|-]     write the definitions JSON (users, vhosts, topology) to FILE or stdout
  quorum_status QUEUE             a quorum queue's members and leader, with each member's Raft state
                                  as the node asked knows it (Warren cluster only)
  add_member QUEUE NODE           add a replica of a quorum queue on NODE; returns once it joined the
                                  queue's Raft group (committed)
  delete_member QUEUE NODE        remove NODE's replica of a quorum queue; returns once it left the group
  grow NODE all|even              add a replica on NODE to every quorum queue (all) or those with an
                                  even number of replicas (even)
  shrink NODE                     remove NODE's replica from every quorum queue

Columns are the management API's field names; nested fields with dots (message_stats.publish).

Flags (anywhere on the line):
  -url URL             management API base URL (env WARREN_CTL_URL; else http://HOST:PORT from
                       WARREN_MANAGEMENT_LISTEN; default http://127.0.0.1:15672)
  -u USER              user name (env WARREN_CTL_USER; default guest)
  -p PASSWORD          password (env WARREN_CTL_PASSWORD; default guest)
  --vhost VHOST        virtual host for list_queues, list_exchanges, list_bindings, list_consumers,
                       purge_queue, delete_queue, quorum_status, add_member and delete_member
                       (default /)
  --formatter FORMAT   table (default) or json
  --if-empty, --if-unused   conditions for delete_queue
  --vhost-pattern RE, --queue-pattern RE   queues grow picks (default all)
  --timeout DURATION   HTTP timeout (default 30s)
`

// options are the parsed command line.
type options struct {
	url, user, password string
	vhost               string
	formatter           string
	ifEmpty, ifUnused   bool
	vhostPattern        string // grow's --vhost-pattern
	queuePattern        string // grow's --queue-pattern
	timeout             time.Duration
	args                []string // command and its positional arguments
}

func defaultURL() string {
	if u := os.Getenv(envURL); u != "" {
		return u
	}
	if l := os.Getenv(envListen); l != "" {
		host, port, err := net.SplitHostPort(l)
		if err == nil {
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			return "http://" + net.JoinHostPort(host, port)
		}
	}
	return "http://127.0.0.1:15672"
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// parseArgs reads flags anywhere on the line, as rabbitmqctl does.
func parseArgs(args []string) (options, error) {
	o := options{url: defaultURL(), user: envOr(envUser, "guest"), password: envOr(envPassword, "guest"),
		vhost: "/", formatter: "table", timeout: 30 * time.Second}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			o.args = append(o.args, a)
			continue
		}
		if a == "--" {
			o.args = append(o.args, args[i+1:]...)
			break
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch name {
		case "if-empty":
			o.ifEmpty = true
			continue
		case "if-unused":
			o.ifUnused = true
			continue
		case "h", "help":
			return o, errHelp
		}
		if !hasVal {
			if i+1 >= len(args) {
				return o, fmt.Errorf("flag %s needs a value", a)
			}
			i++
			val = args[i]
		}
		switch name {
		case "url":
			o.url = val
		case "u", "user", "username":
			o.user = val
		case "p", "password":
			o.password = val
		case "vhost":
			o.vhost = val
		case "vhost-pattern":
			o.vhostPattern = val
		case "queue-pattern":
			o.queuePattern = val
		case "formatter", "f":
			if val != "table" && val != "json" {
				return o, fmt.Errorf("--formatter must be table or json, not %q", val)
			}
			o.formatter = val
		case "timeout", "t":
			d, err := time.ParseDuration(val)
			if err != nil {
				return o, fmt.Errorf("--timeout: %w", err)
			}
			o.timeout = d
		default:
			return o, fmt.Errorf("unknown flag %s", a)
		}
	}
	if len(o.args) == 0 {
		return o, errors.New("no command given")
	}
	return o, nil
}

var errHelp = errors.New("help requested")

// Run executes `warren ctl` with args (without the "ctl" word) and returns the exit code.
func Run(args []string, stdout, stderr io.Writer) int {
	o, err := parseArgs(args)
	if errors.Is(err, errHelp) {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "Error: %v\n\n%s", err, usage)
		return exitUsage
	}
	c := &client{base: strings.TrimRight(o.url, "/"), user: o.user, password: o.password,
		http: &http.Client{Timeout: o.timeout}}
	cmd, rest := o.args[0], o.args[1:]
	r := runner{o: o, c: c, out: stdout}
	switch cmd {
	case "status":
		err = r.status()
	case "cluster_status":
		err = r.clusterStatus()
	case "list_queues":
		err = r.list("/api/queues/"+url.PathEscape(o.vhost), rest, []string{"name", "messages"})
	case "list_exchanges":
		err = r.list("/api/exchanges/"+url.PathEscape(o.vhost), rest, []string{"name", "type"})
	case "list_bindings":
		err = r.list("/api/bindings/"+url.PathEscape(o.vhost), rest, []string{"source", "destination", "destination_type", "routing_key", "arguments"})
	case "list_connections":
		err = r.list("/api/connections", rest, []string{"name", "user", "peer_host", "peer_port", "state"})
	case "list_channels":
		err = r.list("/api/channels", rest, []string{"name", "user", "consumer_count", "messages_unacknowledged"})
	case "list_consumers":
		err = r.list("/api/consumers/"+url.PathEscape(o.vhost), rest, []string{"queue.name", "channel_details.name", "consumer_tag", "ack_required", "prefetch_count", "active"})
	case "list_vhosts":
		err = r.list("/api/vhosts", rest, []string{"name", "messages"})
	case "list_users":
		err = r.list("/api/users", rest, []string{"name", "tags"})
	case "list_permissions":
		err = r.list("/api/permissions", rest, []string{"user", "vhost", "configure", "write", "read"})
	case "list_policies":
		err = r.list("/api/policies", rest, []string{"vhost", "name", "pattern", "apply-to", "definition", "priority"})
	case "purge_queue":
		err = r.queueOp(rest, "purge")
	case "delete_queue":
		err = r.queueOp(rest, "delete")
	case "close_connection":
		err = r.closeConnection(rest)
	case "export_definitions":
		err = r.exportDefinitions(rest)
	case "quorum_status":
		err = r.quorumStatus(rest)
	case "add_member", "delete_member":
		err = r.member(cmd, rest)
	case "grow":
		err = r.grow(rest)
	case "shrink":
		err = r.shrink(rest)
	default:
		fmt.Fprintf(stderr, "Error: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "Error: %v\n", err)
	var ue *usageError
	var ae *apiError
	var ce *connectError
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &ce):
		return exitUnavailable
	case errors.As(err, &ae) && ae.status == http.StatusUnauthorized:
		return exitNoPerm
	}
	return exitError
}

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// connectError is a broker that cannot be reached.
type connectError struct {
	url string
	err error
}

func (e *connectError) Error() string {
	return fmt.Sprintf("cannot reach the management API at %s: %v (is Warren running with management.listen set? use -url or %s)", e.url, e.err, envURL)
}

func (e *connectError) Unwrap() error { return e.err }

// apiError is an HTTP error answer of the API.
type apiError struct {
	status        int
	path          string
	errText, text string
	user          string
}

func (e *apiError) Error() string {
	if e.status == http.StatusUnauthorized && (e.text == "Login failed" || e.text == "") {
		return fmt.Sprintf("authentication failed for user %q (check -u/-p or %s/%s)", e.user, envUser, envPassword)
	}
	if e.status == http.StatusUnauthorized {
		return fmt.Sprintf("user %q is not allowed to do this: %s", e.user, e.text)
	}
	if e.status == http.StatusNotFound {
		return fmt.Sprintf("not found: %s (%s)", e.path, e.text)
	}
	return fmt.Sprintf("%s %d: %s: %s", e.path, e.status, e.errText, e.text)
}

type client struct {
	base, user, password string
	http                 *http.Client
}

// do sends one request and decodes a JSON answer into out (when not nil).
func (c *client) do(method, path string, header http.Header, out any) error {
	return c.send(method, path, nil, header, out)
}

// send is do with a JSON request body (none when body is nil).
func (c *client) send(method, path string, body any, header http.Header, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if body != nil && err == nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if err != nil {
		return &usageError{msg: fmt.Sprintf("bad URL %q: %v", c.base, err)}
	}
	req.SetBasicAuth(c.user, c.password)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &connectError{url: c.base, err: err}
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return &connectError{url: c.base, err: err}
	}
	if resp.StatusCode >= 300 {
		e := &apiError{status: resp.StatusCode, path: path, user: c.user}
		var eb struct {
			Error  string `json:"error"`
			Reason any    `json:"reason"`
		}
		if json.Unmarshal(answer, &eb) == nil {
			e.errText = eb.Error
			if s, ok := eb.Reason.(string); ok {
				e.text = s
			} else if eb.Reason != nil {
				e.text = fmt.Sprint(eb.Reason)
			}
		} else {
			e.text = strings.TrimSpace(string(answer))
		}
		return e
	}
	if out == nil || len(answer) == 0 {
		return nil
	}
	d := json.NewDecoder(bytes.NewReader(answer))
	d.UseNumber()
	if err := d.Decode(out); err != nil {
		return fmt.Errorf("%s: answer is not JSON (is %s a management API?): %w", path, c.base, err)
	}
	return nil
}

type runner struct {
	o   options
	c   *client
	out io.Writer
}

// lookup returns the value at a dotted path.
func lookup(o map[string]any, path string) any {
	var v any = o
	for _, p := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// cell formats a value for a table.
func cell(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	case []any:
		// A list of strings (tags) reads better as rabbitmqctl prints it: [a, b].
		parts := make([]string, 0, len(x))
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				b, _ := json.Marshal(v)
				return string(b)
			}
			parts = append(parts, s)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// list prints the objects of a list endpoint with the given columns.
func (r *runner) list(path string, columns, def []string) error {
	if len(columns) == 0 {
		columns = def
	}
	// Ask only for the top-level fields needed: a list of 100,000 queues stays small.
	top := map[string]bool{}
	var tops []string
	for _, c := range columns {
		t, _, _ := strings.Cut(c, ".")
		if !top[t] {
			top[t] = true
			tops = append(tops, t)
		}
	}
	var items []map[string]any
	if err := r.c.do("GET", path+"?columns="+url.QueryEscape(strings.Join(tops, ",")), nil, &items); err != nil {
		return err
	}
	if r.o.formatter == "json" {
		out := make([]map[string]any, 0, len(items))
		for _, it := range items {
			row := map[string]any{}
			for _, c := range columns {
				row[c] = lookup(it, c)
			}
			out = append(out, row)
		}
		return r.json(out)
	}
	tw := tabwriter.NewWriter(r.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(columns, "\t"))
	for _, it := range items {
		cells := make([]string, len(columns))
		for i, c := range columns {
			cells[i] = strings.ReplaceAll(cell(lookup(it, c)), "\t", " ")
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func (r *runner) json(v any) error {
	enc := json.NewEncoder(r.out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// keyValues prints pairs as an aligned two-column table.
func (r *runner) keyValues(title string, pairs [][2]string) error {
	if title != "" {
		fmt.Fprintln(r.out, title)
	}
	tw := tabwriter.NewWriter(r.out, 0, 4, 2, ' ', 0)
	for _, p := range pairs {
		fmt.Fprintf(tw, "%s\t%s\n", p[0], p[1])
	}
	return tw.Flush()
}

func (r *runner) status() error {
	var ov map[string]any
	if err := r.c.do("GET", "/api/overview", nil, &ov); err != nil {
		return err
	}
	var nodes []map[string]any
	if err := r.c.do("GET", "/api/nodes", nil, &nodes); err != nil {
		var ae *apiError
		// A management user may not read nodes: show what the overview has.
		if !errors.As(err, &ae) || ae.status != http.StatusUnauthorized {
			return err
		}
	}
	node := map[string]any{}
	if len(nodes) > 0 {
		node = nodes[0]
	}
	for _, n := range nodes {
		if n["name"] == ov["node"] { // a cluster lists every member; this node's has the resources
			node = n
		}
	}
	if r.o.formatter == "json" {
		return r.json(map[string]any{"overview": ov, "node": node})
	}
	var alarms []string
	if lookup(node, "mem_alarm") == true {
		alarms = append(alarms, "memory")
	}
	if lookup(node, "disk_free_alarm") == true {
		alarms = append(alarms, "disk")
	}
	alarmText := "(none)"
	if len(alarms) > 0 {
		alarmText = strings.Join(alarms, ", ")
	}
	pairs := [][2]string{
		{"Node", cell(ov["node"])},
		{"Cluster name", cell(ov["cluster_name"])},
		{"Product", cell(ov["product_name"]) + " " + cell(ov["product_version"])},
		{"Management API version", cell(ov["management_version"])},
	}
	if len(node) > 0 {
		up, _ := lookup(node, "uptime").(json.Number)
		ms, _ := up.Int64()
		pairs = append(pairs,
			[2]string{"Uptime", (time.Duration(ms) * time.Millisecond).Truncate(time.Second).String()},
			[2]string{"Memory used / limit", bytesText(node["mem_used"]) + " / " + bytesText(node["mem_limit"])},
			[2]string{"Disk free / limit", bytesText(node["disk_free"]) + " / " + bytesText(node["disk_free_limit"])},
			[2]string{"File descriptors used / total", cell(node["fd_used"]) + " / " + cell(node["fd_total"])},
			[2]string{"Alarms", alarmText},
		)
	}
	if ls, ok := ov["listeners"].([]any); ok {
		for _, l := range ls {
			lm, _ := l.(map[string]any)
			pairs = append(pairs, [2]string{"Listener", fmt.Sprintf("%s %s:%s", cell(lm["protocol"]), cell(lm["ip_address"]), cell(lm["port"]))})
		}
	}
	for _, k := range []string{"connections", "channels", "queues", "exchanges", "consumers"} {
		pairs = append(pairs, [2]string{"Total " + k, cell(lookup(ov, "object_totals."+k))})
	}
	pairs = append(pairs,
		[2]string{"Messages (ready / unacked)", cell(lookup(ov, "queue_totals.messages")) + " (" +
			cell(lookup(ov, "queue_totals.messages_ready")) + " / " + cell(lookup(ov, "queue_totals.messages_unacknowledged")) + ")"},
		[2]string{"Publish rate /s", cell(lookup(ov, "message_stats.publish_details.rate"))},
		[2]string{"Deliver rate /s", cell(lookup(ov, "message_stats.deliver_get_details.rate"))},
	)
	return r.keyValues("Status of node "+cell(ov["node"]), pairs)
}

func bytesText(v any) string {
	n, ok := v.(json.Number)
	if !ok {
		return cell(v)
	}
	f, _ := n.Float64()
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + " " + units[i]
}

func (r *runner) clusterStatus() error {
	var name map[string]any
	if err := r.c.do("GET", "/api/cluster-name", nil, &name); err != nil {
		return err
	}
	var nodes []map[string]any
	if err := r.c.do("GET", "/api/nodes", nil, &nodes); err != nil {
		return err
	}
	var running, all []string
	for _, n := range nodes {
		all = append(all, cell(n["name"]))
		if n["running"] == true {
			running = append(running, cell(n["name"]))
		}
	}
	sort.Strings(all)
	sort.Strings(running)
	// Warren's cluster nodes carry their Raft state (raft_leader); a single node and RabbitMQ
	// do not.
	raft := len(nodes) > 0 && nodes[0]["raft_leader"] != nil
	if r.o.formatter == "json" {
		out := map[string]any{"cluster_name": name["name"], "disk_nodes": all, "running_nodes": running}
		if raft {
			out["nodes"] = nodes
		}
		return r.json(out)
	}
	pairs := [][2]string{
		{"Cluster name", cell(name["name"])},
		{"Disk nodes", strings.Join(all, ", ")},
		{"Running nodes", strings.Join(running, ", ")},
	}
	if raft {
		pairs = append(pairs, [2]string{"Raft leader", cell(nodes[0]["raft_leader"])},
			[2]string{"Raft term / commit index", cell(nodes[0]["raft_term"]) + " / " + cell(nodes[0]["raft_commit_index"])})
	}
	if err := r.keyValues("Cluster status of node "+strings.Join(all, ", "), pairs); err != nil || !raft {
		return err
	}
	fmt.Fprintln(r.out)
	tw := tabwriter.NewWriter(r.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "node\trunning\tvoter\tleader\tapplied_index\tconfig_digest_match\tcluster_address")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cell(n["name"]), cell(n["running"]), cell(n["raft_voter"]),
			cell(n["raft_is_leader"]), cell(n["raft_applied_index"]), cell(n["config_digest_match"]), cell(n["cluster_address"]))
	}
	return tw.Flush()
}

func (r *runner) queueOp(args []string, op string) error {
	if len(args) != 1 {
		return &usageError{msg: op + "_queue takes exactly one queue name"}
	}
	path := "/api/queues/" + url.PathEscape(r.o.vhost) + "/" + url.PathEscape(args[0])
	if op == "purge" {
		if err := r.c.do("DELETE", path+"/contents", nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(r.out, "Purged queue %q in vhost %q\n", args[0], r.o.vhost)
		return nil
	}
	q := url.Values{}
	if r.o.ifEmpty {
		q.Set("if-empty", "true")
	}
	if r.o.ifUnused {
		q.Set("if-unused", "true")
	}
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	if err := r.c.do("DELETE", path, nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(r.out, "Deleted queue %q in vhost %q\n", args[0], r.o.vhost)
	return nil
}

func (r *runner) closeConnection(args []string) error {
	if len(args) < 1 || len(args) > 2 {
		return &usageError{msg: "close_connection takes a connection name and an optional reason"}
	}
	h := http.Header{}
	if len(args) == 2 {
		h.Set("X-Reason", args[1])
	}
	if err := r.c.do("DELETE", "/api/connections/"+url.PathEscape(args[0]), h, nil); err != nil {
		return err
	}
	fmt.Fprintf(r.out, "Closed connection %q\n", args[0])
	return nil
}

func (r *runner) exportDefinitions(args []string) error {
	if len(args) > 1 {
		return &usageError{msg: "export_definitions takes at most one file name"}
	}
	var defs map[string]any
	if err := r.c.do("GET", "/api/definitions", nil, &defs); err != nil {
		return err
	}
	if len(args) == 0 || args[0] == "-" {
		return r.json(defs)
	}
	b, err := json.MarshalIndent(defs, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(args[0], append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing definitions: %w", err)
	}
	fmt.Fprintf(r.out, "Exported definitions to %s\n", args[0])
	return nil
}

// member is add_member or delete_member QUEUE NODE (Warren's endpoint: RabbitMQ 3.10's
// management API has none, rabbitmq-queues talks Erlang distribution).
func (r *runner) member(cmd string, args []string) error {
	if len(args) != 2 {
		return &usageError{msg: cmd + " takes a queue name and a node name"}
	}
	path := "/api/queues/" + url.PathEscape(r.o.vhost) + "/" + url.PathEscape(args[0]) + "/members"
	if cmd == "add_member" {
		if err := r.c.send("POST", path, map[string]string{"node": args[1]}, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(r.out, "Added a replica of quorum queue %q in vhost %q on node %q\n", args[0], r.o.vhost, args[1])
		return nil
	}
	if err := r.c.do("DELETE", path+"/"+url.PathEscape(args[1]), nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(r.out, "Removed the replica of quorum queue %q in vhost %q on node %q\n", args[0], r.o.vhost, args[1])
	return nil
}

func (r *runner) grow(args []string) error {
	if len(args) != 2 || (args[1] != "all" && args[1] != "even") {
		return &usageError{msg: "grow takes a node name and all or even"}
	}
	var res []map[string]any
	body := map[string]string{"strategy": args[1], "vhost_pattern": r.o.vhostPattern, "queue_pattern": r.o.queuePattern}
	if err := r.c.send("POST", "/api/nodes/"+url.PathEscape(args[0])+"/quorum/grow", body, nil, &res); err != nil {
		return err
	}
	return r.memberChanges(res)
}

func (r *runner) shrink(args []string) error {
	if len(args) != 1 {
		return &usageError{msg: "shrink takes a node name"}
	}
	var res []map[string]any
	if err := r.c.send("POST", "/api/nodes/"+url.PathEscape(args[0])+"/quorum/shrink", nil, nil, &res); err != nil {
		return err
	}
	return r.memberChanges(res)
}

// memberChanges prints grow's or shrink's outcome per queue, as rabbitmq-queues does.
func (r *runner) memberChanges(res []map[string]any) error {
	if r.o.formatter == "json" {
		return r.json(res)
	}
	tw := tabwriter.NewWriter(r.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "vhost\tname\tsize\tresult")
	for _, c := range res {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cell(c["vhost"]), cell(c["name"]), cell(c["size"]), cell(c["result"]))
	}
	return tw.Flush()
}

// quorumStatus is quorum_status QUEUE: Warren's endpoint (RabbitMQ 3.10's management API has
// none; rabbitmq-queues asks every member over Erlang distribution). The node asked knows
// its own replica's Raft state and, when it leads the group, every member's log progress;
// the reported_by column says which row comes from where.
func (r *runner) quorumStatus(args []string) error {
	if len(args) != 1 {
		return &usageError{msg: "quorum_status takes exactly one queue name"}
	}
	var st map[string]any
	path := "/api/queues/" + url.PathEscape(r.o.vhost) + "/" + url.PathEscape(args[0]) + "/quorum_status"
	if err := r.c.do("GET", path, nil, &st); err != nil {
		return err
	}
	if r.o.formatter == "json" {
		return r.json(st)
	}
	leader := cell(st["leader"])
	if leader == "" {
		leader = "unknown to this node"
	}
	fmt.Fprintf(r.out, "Status of quorum queue %q in vhost %q on node %s (leader: %s)\n", args[0], r.o.vhost, cell(st["node"]), leader)
	reps, _ := st["replicas"].([]any)
	tw := tabwriter.NewWriter(r.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "node\traft_state\tonline\tterm\tcommit_index\tapplied_index\tlast_log_index\tsnapshot_index\tmatch_index\treported_by")
	for _, x := range reps {
		m, _ := x.(map[string]any)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cell(m["node"]), cell(m["raft_state"]), cell(m["online"]), cell(m["term"]),
			cell(m["commit_index"]), cell(m["applied_index"]), cell(m["last_log_index"]), cell(m["snapshot_index"]), cell(m["match_index"]), cell(m["reported_by"]))
	}
	return tw.Flush()
}

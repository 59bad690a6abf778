#!/usr/bin/env bash
# compare.sh - run the fixed benchmark matrix against Warren and RabbitMQ and
# print a markdown table of medians, the Warren/RabbitMQ ratio and the
# run-to-run spread.
#
# Runs are interleaved (W,R,W,R,...) per point so drift in machine load hits
# both brokers alike. RabbitMQ is skipped if it does not answer.
#
# Points (issue 7's matrix):
#   a  transient 16 B, 1p/1c, autoack
#   b  transient 1 KiB, manual ack, prefetch 100, multi-ack 10
#   c  persistent 1 KiB, confirm window 256, manual ack
#   d  4 producers / 4 queues / 4 consumers, transient 1 KiB
#   e  fanout 1 -> 10 queues, 1 KiB
#   f  persistent 1 KiB, confirm window 1 (confirm latency)
#   g  backlog: G_MESSAGES persistent 1 KiB messages published (confirmed), then drained; RSS at the top
#   h  connection churn: open connection + channel, close, repeat
#   i  I_CONNS idle connections: broker RSS
#   j  J_QUEUES queues declared: time and RSS
#   k  fixed rate 5000 msgs/s, 1 KiB, 1p/1c: end-to-end latency
#   l  many small clients (issue 22): 400 producers x 25 msgs/s, 400 queues, 400 consumers
#      (manual ack, prefetch 10), 1 KiB: latency, broker CPU per message, RSS; also run
#      through the bare forwarder (the floor)
#   m  fixed 5000 msgs/s, 1 KiB, 1p/1c, autoack: broker CPU per message; also the floor
#   n  ramp: the many-clients load at RAMP_COUNTS clients until p99 passes 100 ms or the
#      consumers fall behind; the largest count that kept up (one run per broker)
#   sa stream (issue 19): publish 16 B with confirms (window 256), 1 producer, no consumer
#   sb stream: publish 1 KiB with confirms (window 256)
#   sc stream: SC_MESSAGES x 16 B published (confirm 256), read from first by one consumer
#      (prefetch 1000, multi-ack 100), then by 10 consumers at offsets 0, N/10, ..., 9N/10
#   sd stream: SD_MESSAGES x 16 B published, then read from first: the broker's largest RSS
#      during each (sampled every second) and the disk the stream takes (du of the brokers'
#      stream directories before and after); only run when named in POINTS (100M by default)
#   pq     issue 18: a 10-priority queue at full speed (priorities 0-9 spread), 1 KiB, manual ack
#   rpc1   issue 18: RPC round trips over direct reply-to, 1 caller
#   rpc16  issue 18: the same with 16 concurrent callers
#   sac    issue 18: single-active-consumer failover, cancel of the active consumer to the first
#          delivery on the next, over a backlog (bench -mode sac; stalls: no delivery in 5 s)
#   q1 quorum queues (issue 21), 3-node clusters: 1 KiB persistent, confirm window 256, manual
#      ack (prefetch 100), 1p/1c, x-queue-type quorum; client on node 1 of each cluster
#   q4 the same, 4 producers / 4 queues / 4 consumers (queue leaders fall where they fall)
#      The q points run against a 3-node Warren cluster this script starts (three processes,
#      free loopback ports, temp data dirs; stopped at the end) unless WARREN_QURL is given, and
#      against the 3-node RabbitMQ cluster of bench/rabbit-cluster.sh (RABBIT_QURL, default its
#      rq1 on 127.0.0.1:5681), started here when it does not answer and RQ_START=1 (root).
#   qf leader failover: a publisher (1 KiB persistent, confirm window 256, 2000 msgs/s, no
#      consumer) on one node of the cluster; after QF_AFTER (default 8s) one node is killed -9:
#      run r kills n3, n2, n1 (r = 1, 2, 3; the publisher is on n1, n1, n2), the node the run's
#      queue was declared through, which leads its group on RabbitMQ (reported before the kill).
#      Warren does not expose a group's leader: one queue serves its three runs, so that killing
#      each node in turn kills the leader at least once. REPEATS=3 kills each node once. The
#      time from the kill to the first confirm after it (the end of the confirm gap of 50 ms or
#      more that spans the kill; 0: none did, the first confirm came within 50 ms), per run;
#      the victim is restarted after.
#      Needs the clusters this
#      script starts (Warren) and bench/rabbit-cluster.sh's (RabbitMQ).
#      Not in the default POINTS: POINTS="q1 q4 qf" bench/compare.sh
#   dl delayed messages (issue 18): DL_MESSAGES persistent messages through an
#      x-delayed-message exchange, due times spread over DL_SPAN: lateness (arrival - due)
#      and the broker's largest RSS. Warren only (RabbitMQ's Debian package lacks the plugin);
#      not in the default POINTS (it lasts DL_SPAN): POINTS="dl" bench/compare.sh
#
# Points l and m also run the floor (warren-bench -mode floor: a length-prefixed forwarder in
# a child process, measured like a broker) as a third column, interleaved W,R,floor, and print
# a second table: Warren and RabbitMQ per message against the floor. Their CPU figures need
# the brokers' PIDs (same host). RabbitMQ's Debian package starts it through su with the
# open-files limit of /etc/security/limits.d (1024 by default: 832 sockets, ~415 clients);
# raise it there and restart RabbitMQ before point n, or n stops RabbitMQ at its fd limit.
#
# Environment:
#   WARREN_URL  Warren broker URL. Unset: Warren is built from this tree and started on a free
#               loopback port with a temporary data directory, and stopped at the end.
#   WARREN_PID  PID of that broker (for RSS) when WARREN_URL is given; found from the
#               listening port when unset (needs ss, same host)
#   RABBIT_URL  RabbitMQ URL (default amqp://guest:guest@127.0.0.1:5672/)
#   RABBIT_PID  PID of RabbitMQ's beam.smp; found from the listening port when unset
#   DURATION    per-run duration of the throughput points (default 10s)
#   REPEATS     runs per broker per point (default 3)
#   POINTS      subset of points to run, e.g. "a c f" (default: all, g last)
#   G_MESSAGES  backlog size for g (default 1000000)
#   I_CONNS     idle connections for i (default 10000). A broker whose open-files limit is
#               lower gets half its limit instead (RabbitMQ's Debian default is 1024); compare
#               the per-connection figure then.
#   J_QUEUES    queues for j (default 100000)
#   RAMP_COUNTS client counts for n (default 100,200,400,600,800,1000,1200,1600,2000)
#   RAMP_STEP   duration of each ramp step (default 10s)
#   SC_MESSAGES stream length for sc (default 10000000)
#   SD_MESSAGES stream length for sd (default 100000000)
#   WARREN_STREAM_DIR, RABBIT_STREAM_DIR  the brokers' stream directories, for sd's disk use
#               (default: the data dir of the Warren this script starts; RabbitMQ's Debian
#               default /var/lib/rabbitmq/mnesia/rabbit@<short hostname>/stream)
#   DL_MESSAGES, DL_SPAN  point dl: messages (default 1000000) and span of due times (default 10m)
#   WARREN_QURL, RABBIT_QURL  node 1 of the Warren / RabbitMQ 3-node clusters for the q points
#   RQ_START    1: start (and at the end stop) bench/rabbit-cluster.sh if RABBIT_QURL does not answer
#   BENCH_ARGS  extra arguments for every bench run, e.g. "-client amqp091"
#   OUT         directory for the raw JSON results (default: a new temp dir)
#   BENCH_BIN   prebuilt warren-bench binary (default: built from this tree)
#   TABLE_ONLY  set: run nothing, print the table from the JSON already in OUT (e.g. after
#               re-running some POINTS into the same OUT)
#
# When this script starts Warren itself, points g, i and j each get a freshly started Warren, so
# their RSS is not the heap left over from earlier points' backlogs; so do sc and sd.
#
# Needs jq. RSS figures need the brokers on this host (read from /proc/PID/status).
# Usage: bench/compare.sh      or      WARREN_URL=amqp://guest:guest@127.0.0.1:5673/ bench/compare.sh
set -euo pipefail

cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "compare.sh: jq is required" >&2; exit 1; }
RABBIT_URL=${RABBIT_URL:-amqp://guest:guest@127.0.0.1:5672/}
DURATION=${DURATION:-10s}
REPEATS=${REPEATS:-3}
POINTS_GIVEN=${POINTS:+1}
POINTS=${POINTS:-a b c d e f h k l m n pq rpc1 rpc16 sac i j g}
RAMP_COUNTS=${RAMP_COUNTS:-100,200,400,600,800,1000,1200,1600,2000}
RAMP_STEP=${RAMP_STEP:-10s}
G_MESSAGES=${G_MESSAGES:-1000000}
I_CONNS=${I_CONNS:-10000}
J_QUEUES=${J_QUEUES:-100000}
BENCH_ARGS=${BENCH_ARGS:-}
# Stream points: sa, sb and sc join the default matrix; sd (100M messages) runs when named.
[[ -z $POINTS_GIVEN ]] && POINTS="$POINTS sa sb sc"
SC_MESSAGES=${SC_MESSAGES:-10000000}
SD_MESSAGES=${SD_MESSAGES:-100000000}
RABBIT_STREAM_DIR=${RABBIT_STREAM_DIR:-/var/lib/rabbitmq/mnesia/rabbit@$(hostname -s)/stream}
OUT=${OUT:-$(mktemp -d /tmp/warren-compare.XXXXXX)}
mkdir -p "$OUT"

# Idle connections need file descriptors on both sides of the socket.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

BIN=${BENCH_BIN:-}
if [[ -z $BIN ]]; then
	BIN=$OUT/warren-bench
	go build -o "$BIN" ./bench/cmd/warren-bench
fi

WARREN_STARTED=""
WARREN_BUILT=""
stop_warren() {
	if [[ -n $WARREN_STARTED ]]; then
		kill "$WARREN_PID" 2>/dev/null || true
		wait "$WARREN_PID" 2>/dev/null || true
		rm -rf "$WARREN_DATA"
		WARREN_STARTED=""
	fi
}

# start_warren: build (once) and start Warren on a free loopback port with a new data directory.
start_warren() {
	# Built once per run of this script (a reused OUT may hold a binary of another commit).
	[[ -n $WARREN_BUILT ]] || { go build -o "$OUT/warren" . && WARREN_BUILT=1; }
	WARREN_DATA=$(mktemp -d /tmp/warren-compare-data.XXXXXX)
	# Run from the data dir so no config.yaml is picked up: defaults plus these flags.
	local log
	log=$OUT/warren-$(basename "$WARREN_DATA").log
	(cd "$WARREN_DATA" && WARREN_MANAGEMENT_LISTEN= WARREN_PROMETHEUS_LISTEN= exec "$OUT/warren" -listen 127.0.0.1:0 -data-dir "$WARREN_DATA/data") 2>"$log" &
	WARREN_PID=$!
	WARREN_STARTED=1
	local addr=""
	for _ in $(seq 100); do
		addr=$(sed -n 's/.*msg="warren ready" addr=\([^ ]*\).*/\1/p' "$log")
		[[ -n $addr ]] && break
		kill -0 "$WARREN_PID" 2>/dev/null || break
		sleep 0.1
	done
	[[ -n $addr ]] || { echo "compare.sh: Warren did not start:" >&2; cat "$log" >&2; exit 1; }
	WARREN_URL="amqp://guest:guest@$addr/"
	echo "compare.sh: started Warren (pid $WARREN_PID) at $addr, data in $WARREN_DATA" >&2
}

# free_port: a free loopback TCP port (the kernel's choice; closed again at once).
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A 3-node Warren cluster for the q points: three processes with their own config file, data
# directory and ports (docs/cluster.md "Running a 3-node cluster on one machine").
QCLUSTER_PIDS=()
QCLUSTER_DIR=""
WARREN_QURLS=() # the cluster's three AMQP URLs, when this script started it
stop_warren_cluster() {
	local pid
	for pid in "${QCLUSTER_PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${QCLUSTER_PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	QCLUSTER_PIDS=()
	[[ -n $QCLUSTER_DIR ]] && rm -rf "$QCLUSTER_DIR"
	QCLUSTER_DIR=""
}

# launch_warren_node N: start node nN of the q cluster (its config written by start_warren_cluster).
launch_warren_node() {
	local n=$1
	(cd "$QCLUSTER_DIR/n$n" && exec "$OUT/warren" -config "$QCLUSTER_DIR/n$n/config.yaml") 2>>"$QCLUSTER_DIR/n$n/log" &
	QCLUSTER_PIDS[n - 1]=$!
}

# await_warren_node N: wait until node nN logged "warren ready" (since its log was SKIP bytes).
await_warren_node() {
	local n=$1 skip=${2:-0} log=$QCLUSTER_DIR/n$1/log addr=""
	for _ in $(seq 300); do
		addr=$(tail -c +$((skip + 1)) "$log" | sed -n 's/.*msg="warren ready" addr=\([^ ]*\).*/\1/p')
		[[ -n $addr ]] && return 0
		kill -0 "${QCLUSTER_PIDS[n - 1]}" 2>/dev/null || break
		sleep 0.1
	done
	echo "compare.sh: Warren cluster node n$n did not start:" >&2
	cat "$log" >&2
	exit 1
}

start_warren_cluster() {
	[[ -n $WARREN_BUILT ]] || { go build -o "$OUT/warren" . && WARREN_BUILT=1; }
	QCLUSTER_DIR=$(mktemp -d /tmp/warren-compare-cluster.XXXXXX)
	local n amqp=() raft=() nodes=""
	for n in 1 2 3; do
		amqp+=("$(free_port)")
		raft+=("$(free_port)")
	done
	for n in 1 2 3; do
		nodes+="{name: n$n, address: 127.0.0.1:${raft[$((n - 1))]}}, "
	done
	WARREN_QURLS=()
	for n in 1 2 3; do
		mkdir -p "$QCLUSTER_DIR/n$n"
		cat >"$QCLUSTER_DIR/n$n/config.yaml" <<END
amqp: {listen: "127.0.0.1:${amqp[$((n - 1))]}"}
management: {listen: ""}
prometheus: {listen: ""}
storage: {dir: $QCLUSTER_DIR/n$n/data}
cluster:
  name: compare
  node_name: n$n
  listen: "127.0.0.1:${raft[$((n - 1))]}"
  secret: "compare-sh-bench-only-secret"
  nodes: [${nodes%, }]
END
		WARREN_QURLS+=("amqp://guest:guest@127.0.0.1:${amqp[$((n - 1))]}/")
		launch_warren_node "$n"
	done
	for n in 1 2 3; do
		await_warren_node "$n"
	done
	WARREN_QURL=${WARREN_QURLS[0]}
	WARREN_QPID=${QCLUSTER_PIDS[0]}
	echo "compare.sh: started a 3-node Warren cluster (pids ${QCLUSTER_PIDS[*]}), node 1 at $WARREN_QURL, data in $QCLUSTER_DIR" >&2
}

RQ_STARTED=""
stop_all() {
	stop_warren
	stop_warren_cluster
	if [[ -n $RQ_STARTED ]]; then
		bench/rabbit-cluster.sh stop || true
		RQ_STARTED=""
	fi
}
trap stop_all EXIT

# The memory points measure a fresh Warren when this script runs it: RSS after earlier points
# is mostly heap kept from their backlogs, which says nothing about connections or queues.
OWN_WARREN=""
if [[ -z ${WARREN_URL:-} && -z ${TABLE_ONLY:-} ]]; then
	OWN_WARREN=1
	start_warren
fi

# pid_of_url URL: the PID listening on the URL's port on this host, or nothing.
pid_of_url() {
	local port
	port=$(sed -E 's#^amqps?://([^@/]*@)?[^:/]*:?([0-9]*).*#\2#' <<<"$1")
	[[ -z $port ]] && port=5672
	command -v ss >/dev/null || return 0
	ss -ltnpH "sport = :$port" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1
}
WARREN_URL=${WARREN_URL:-amqp://guest:guest@127.0.0.1:1/} # TABLE_ONLY: never dialled
WARREN_PID=${WARREN_PID:-$(pid_of_url "$WARREN_URL")}
RABBIT_PID=${RABBIT_PID:-$(pid_of_url "$RABBIT_URL")}

reachable() {
	timeout 15 "$BIN" -url "$1" -mode queues -count 1 -queue-prefix compare-probe -json >/dev/null 2>&1
}

BROKERS=(warren)
# floor: the bench starts its own forwarder process per run and measures it; no URL or PID.
declare -A URL=([warren]=$WARREN_URL [rabbit]=$RABBIT_URL [floor]=$WARREN_URL) PID=([warren]=${WARREN_PID:-} [rabbit]=${RABBIT_PID:-} [floor]="")
if [[ -n ${TABLE_ONLY:-} ]]; then
	BROKERS+=(rabbit)
else
	reachable "$WARREN_URL" || { echo "compare.sh: Warren not reachable at $WARREN_URL" >&2; exit 1; }
	if reachable "$RABBIT_URL"; then
		BROKERS+=(rabbit)
		RABBIT_SINGLE_OK=1
	else
		echo "compare.sh: RabbitMQ not reachable at $RABBIT_URL, skipping it" >&2
	fi
fi

# The quorum points (q1, q4) run against 3-node clusters, not the brokers above.
QPOINTS=""
for p in $POINTS; do
	[[ $p =~ ^q([0-9]+|f)$ ]] && QPOINTS+=" $p"
done
RABBIT_QURL=${RABBIT_QURL:-amqp://guest:guest@127.0.0.1:5681/}
RABBIT_Q_OK=""
if [[ -n $QPOINTS && -z ${TABLE_ONLY:-} ]]; then
	[[ -n ${WARREN_QURL:-} ]] || start_warren_cluster
	WARREN_QPID=${WARREN_QPID:-$(pid_of_url "$WARREN_QURL")}
	# The first declare waits for the metadata group's first election.
	for _ in 1 2 3; do
		reachable "$WARREN_QURL" && break
	done
	reachable "$WARREN_QURL" || { echo "compare.sh: Warren cluster not reachable at $WARREN_QURL" >&2; exit 1; }
	if ! reachable "$RABBIT_QURL" && [[ ${RQ_START:-} == 1 ]]; then
		bench/rabbit-cluster.sh start
		RQ_STARTED=1
	fi
	if reachable "$RABBIT_QURL"; then
		RABBIT_Q_OK=1
		RABBIT_QPID=$(pid_of_url "$RABBIT_QURL")
		[[ " ${BROKERS[*]} " == *" rabbit "* ]] || BROKERS+=(rabbit)
	else
		echo "compare.sh: RabbitMQ cluster not reachable at $RABBIT_QURL (bench/rabbit-cluster.sh start, or RQ_START=1), skipping it" >&2
	fi
fi

# idle_conns BROKER: I_CONNS, or half the broker's open-files limit if that is lower.
idle_conns() {
	local pid=${PID[$1]} lim
	if [[ -n $pid && -r /proc/$pid/limits ]]; then
		lim=$(awk '/^Max open files/ {print $4}' "/proc/$pid/limits")
		if [[ $lim =~ ^[0-9]+$ ]] && ((lim / 2 < I_CONNS)); then
			echo $((lim / 2))
			return
		fi
	fi
	echo "$I_CONNS"
}

# point -> description and bench arguments (g is two runs, see run_point)
declare -A DESC ARGS
DESC[a]="transient 16 B, 1p/1c, autoack"
ARGS[a]="-size 16"
DESC[b]="transient 1 KiB, manual ack, prefetch 100, multi-ack 10"
ARGS[b]="-size 1024 -autoack=false -prefetch 100 -multi-ack 10"
DESC[c]="persistent 1 KiB, confirm window 256, manual ack (prefetch 100)"
ARGS[c]="-size 1024 -persistent -confirm 256 -autoack=false -prefetch 100"
DESC[d]="4p/4q/4c transient 1 KiB, autoack"
ARGS[d]="-producers 4 -queues 4 -consumers 4 -size 1024"
DESC[e]="fanout 1 -> 10 queues, 1 KiB, autoack"
ARGS[e]="-fanout 10 -size 1024"
DESC[f]="persistent 1 KiB, confirm window 1 (latency)"
ARGS[f]="-size 1024 -persistent -confirm 1"
DESC[g]="backlog of $G_MESSAGES persistent 1 KiB msgs: publish (confirm 256), then drain"
ARGS[g]="(two runs)"
DESC[h]="connection churn (open conn+channel, close)"
ARGS[h]="-mode churn"
DESC[i]="$I_CONNS idle connections"
ARGS[i]="-mode idle-conns -duration 15s"
DESC[j]="$J_QUEUES queues declared"
ARGS[j]="-mode queues -count $J_QUEUES -duration 1h"
DESC[k]="fixed 5000 msgs/s, 1 KiB, 1p/1c, autoack (latency)"
ARGS[k]="-size 1024 -rate 5000"
DESC[l]="400p x 25 msgs/s, 400 q, 400c manual ack prefetch 10, 1 KiB"
ARGS[l]="-mode many -producers 400 -rate 25"
DESC[m]="fixed 5000 msgs/s, 1 KiB, 1p/1c, autoack (CPU/msg)"
ARGS[m]="-size 1024 -rate 5000"
DESC[n]="ramp of 25 msgs/s clients ($RAMP_COUNTS), $RAMP_STEP per step"
ARGS[n]="-mode ramp -rate 25 -ramp-counts $RAMP_COUNTS -ramp-p99 100ms"
DL_MESSAGES=${DL_MESSAGES:-1000000}
DL_SPAN=${DL_SPAN:-10m}
DESC[dl]="$DL_MESSAGES delayed msgs (x-delayed-message, persistent, confirm 256), due over $DL_SPAN"
ARGS[dl]="-mode delayed -pmessages $DL_MESSAGES -delay-span $DL_SPAN -persistent -confirm 256 -size 100"
# Points that also run the floor, and its arguments: the same load, with acks read (and
# dropped) by the forwarder where the broker gets manual acks, none where it runs autoack.
declare -A FLOOR_ARGS
FLOOR_ARGS[l]="-mode floor -producers 400 -rate 25 -autoack=false -prefetch 10"
FLOOR_ARGS[m]="-mode floor -producers 1 -rate 5000 -size 1024 -autoack"

# Stream points (issue 19).
STREAM_READ="-stream -drain -autoack=false -prefetch 1000 -multi-ack 100"
DESC[sa]="stream: publish 16 B, confirm window 256"
ARGS[sa]="-stream -size 16 -confirm 256 -consumers 0"
DESC[sb]="stream: publish 1 KiB, confirm window 256"
ARGS[sb]="-stream -size 1024 -confirm 256 -consumers 0"
DESC[sc]="stream of $SC_MESSAGES x 16 B: publish (confirm 256), read from first, 10 consumers at offsets k*N/10"
ARGS[sc]="(three runs)"
DESC[sd]="stream of $SD_MESSAGES x 16 B: publish (confirm 256), read from first; RSS and disk"
ARGS[sd]="(two runs)"

# point -> "label~jq expression[~result file prefix]" metrics, separated by ';'
declare -A METRICS
THR="recv msg/s (hi)~.consume_rate;sent msg/s (hi)~.publish_rate;e2e p50 ms (lo)~.latency.p50_ms;e2e p99 ms (lo)~.latency.p99_ms"
METRICS[a]=$THR
METRICS[b]=$THR
METRICS[c]="recv msg/s (hi)~.consume_rate;confirmed msg/s (hi)~.confirm_rate;confirm p50 ms (lo)~.confirm_latency.p50_ms;confirm p99 ms (lo)~.confirm_latency.p99_ms"
METRICS[d]=$THR
METRICS[e]=$THR
METRICS[f]="confirmed msg/s (hi)~.confirm_rate;confirm p50 ms (lo)~.confirm_latency.p50_ms;confirm p99 ms (lo)~.confirm_latency.p99_ms"
METRICS[g]="publish msg/s, confirmed (hi)~.confirm_rate~gfill;RSS MB at top of backlog (lo)~.rss_bytes / 1e6 | round~gfill;drain msg/s (hi)~.consume_rate~gdrain;RSS MB after drain (lo)~.rss_bytes / 1e6 | round~gdrain"
METRICS[h]="connections/s (hi)~.conn_rate;open+close p50 ms (lo)~.conn_latency.p50_ms"
METRICS[i]="connections held (hi)~.alive;RSS MB (lo)~.rss_bytes / 1e6 | round;RSS KB per connection (lo)~(.rss_bytes - .rss_before_bytes) / .connections / 1024 | round"
METRICS[j]="declare s (lo)~.declare_seconds;declares/s (hi)~.declare_rate;RSS MB with all declared (lo)~.rss_bytes / 1e6 | round;RSS KB per queue (lo)~(.rss_bytes - .rss_before_bytes) / .declared / 1024 * 10 | round / 10"
METRICS[k]="recv msg/s~.consume_rate;e2e p50 ms (lo)~.latency.p50_ms;e2e p99 ms (lo)~.latency.p99_ms;e2e p99.9 ms (lo)~.latency.p999_ms"
CPU="recv msg/s (hi)~.consume_rate;e2e p50 ms (lo)~.latency.p50_ms;e2e p99 ms (lo)~.latency.p99_ms;e2e p99.9 ms (lo)~.latency.p999_ms;broker CPU % of a core (lo)~.broker_cpu_percent;broker CPU us/msg (lo)~.broker_us_per_msg;RSS MB (lo)~.rss_bytes / 1e6 | round"
METRICS[l]=$CPU
METRICS[m]=$CPU
METRICS[sa]="confirmed msg/s (hi)~.confirm_rate;confirm p50 ms (lo)~.confirm_latency.p50_ms;confirm p99 ms (lo)~.confirm_latency.p99_ms"
METRICS[sb]=${METRICS[sa]}
METRICS[sc]="publish msg/s, confirmed (hi)~.confirm_rate~scfill;read from first msg/s (hi)~.consume_rate~scfirst;10 consumers at 10 offsets, msg/s in all (hi)~.consume_rate~scspread;largest RSS MB (lo)~[.rss_max_bytes // 0] | max / 1e6 | round~scall"
METRICS[sd]="publish msg/s, confirmed (hi)~.confirm_rate~sdfill;largest RSS MB while publishing (lo)~.rss_max_bytes / 1e6 | round~sdfill;read from first msg/s (hi)~.consume_rate~sdfirst;largest RSS MB while reading (lo)~.rss_max_bytes / 1e6 | round~sdfirst;disk bytes per message (lo)~.disk_bytes / .messages * 100 | round / 100~sddisk;disk / (body + content header) (lo)~.disk_bytes / .messages / (.size + 15) * 100 | round / 100~sddisk"
AT_MAX='(.ramp_max_clients) as $m | [.ramp[] | select(.clients == $m)][0]'
METRICS[n]="clients kept under p99 100 ms (hi)~.ramp_max_clients // 0;msgs/s at that count (hi)~$AT_MAX | .consume_rate;p99 ms at that count (lo)~$AT_MAX | .p99_ms;broker CPU % at that count~$AT_MAX | .broker_cpu_percent"
METRICS[dl]="published msg/s (hi)~.publish_rate;lateness p50 ms (lo)~.latency.p50_ms;lateness p99 ms (lo)~.latency.p99_ms;lateness max ms (lo)~.latency.max_ms;largest RSS MB (lo)~.rss_bytes / 1e6 | round;received (hi)~.received"

# Issue 21's quorum-queue points, on 3-node clusters (see run_point).
DESC[q1]="quorum queue, 3 nodes: 1p/1c persistent 1 KiB, confirm window 256, manual ack (prefetch 100)"
ARGS[q1]="-quorum -size 1024 -confirm 256 -autoack=false -prefetch 100"
DESC[q4]="quorum queues, 3 nodes: 4p/4q/4c persistent 1 KiB, confirm window 256, manual ack (prefetch 100)"
ARGS[q4]="-quorum -producers 4 -queues 4 -consumers 4 -size 1024 -confirm 256 -autoack=false -prefetch 100"
METRICS[q1]=${METRICS[c]}
METRICS[q4]=${METRICS[c]}
QF_AFTER=${QF_AFTER:-8}
DESC[qf]="leader failover: kill -9 of a node under a confirming publisher on another (1 KiB persistent, confirm window 256, 2000 msgs/s)"
ARGS[qf]="-quorum -size 1024 -confirm 256 -rate 2000 -consumers 0"
METRICS[qf]="run 1 (kill n3, publisher on n1): kill to first confirm ms (lo)~.failover_ms~qfr1;run 2 (kill n2, publisher on n1): kill to first confirm ms (lo)~.failover_ms~qfr2;run 3 (kill n1, publisher on n2): kill to first confirm ms (lo)~.failover_ms~qfr3"

# Issue 18's queue-feature points (bench/features.go).
DESC[pq]="x-max-priority 10, priorities 0-9, 1 KiB, 1p/1c manual ack prefetch 100, multi-ack 10"
ARGS[pq]="-mode priority -size 1024 -autoack=false -prefetch 100 -multi-ack 10"
METRICS[pq]=$THR
DESC[rpc1]="RPC over direct reply-to, 1 caller, 16 B"
ARGS[rpc1]="-mode rpc -producers 1"
DESC[rpc16]="RPC over direct reply-to, 16 callers, 16 B"
ARGS[rpc16]="-mode rpc -producers 16"
RPC="round trips/s (hi)~.consume_rate;round trip p50 ms (lo)~.latency.p50_ms;round trip p99 ms (lo)~.latency.p99_ms"
METRICS[rpc1]=$RPC
METRICS[rpc16]=$RPC
DESC[sac]="single-active-consumer failover (cancel -> first delivery to the next), backlog, prefetch 10"
ARGS[sac]="-mode sac -prefetch 10"
METRICS[sac]="failovers (hi)~.received;stalls (lo)~.failed // 0;failover p50 ms (lo)~.latency.p50_ms;failover p99 ms (lo)~.latency.p99_ms"

# bench BROKER FILE TIMEOUT ARGS...: one bench run, JSON to FILE; a failed run leaves no FILE.
bench() {
	local b=$1 f=$2 limit=$3
	shift 3
	local pidarg=()
	[[ -n ${PID[$b]} ]] && pidarg=(-broker-pid "${PID[$b]}")
	# shellcheck disable=SC2086 # BENCH_ARGS holds several words on purpose
	if ! timeout "$limit" "$BIN" -url "${URL[$b]}" -json "${pidarg[@]}" $BENCH_ARGS "$@" >"$f" 2>"${f%.json}.err"; then
		echo "  failed: $(tail -n 1 "${f%.json}.err")" >&2
		rm -f "$f"
		return 1
	fi
}

# Throughput runs are killed if they overrun their duration by a minute.
case $DURATION in
*ms) secs=1 ;;
*s) secs=${DURATION%s} ;;
*m) secs=$((${DURATION%m} * 60)) ;;
*) secs=600 ;;
esac
limit=$((${secs%%.*} + 60))

run_point() {
	local p=$1 b=$2 r=$3
	if [[ $b == warren && -n $OWN_WARREN && $p =~ ^[gij]$ ]]; then
		stop_warren
		start_warren
		URL[warren]=$WARREN_URL PID[warren]=$WARREN_PID
	fi
	if [[ $p == qf ]]; then
		run_failover "$b" "$r"
		settle
		return
	fi
	if [[ $p =~ ^q[0-9]+$ ]]; then
		local qurl qpid
		if [[ $b == warren ]]; then
			qurl=$WARREN_QURL qpid=${WARREN_QPID:-0}
		else
			[[ -n $RABBIT_Q_OK ]] || return 0
			qurl=$RABBIT_QURL qpid=${RABBIT_QPID:-0}
		fi
		echo "point $p ($b cluster, run $r/$REPEATS): ${ARGS[$p]}" >&2
		# The later -url and -broker-pid override those bench() puts first (node 1's PID: RSS and
		# CPU of one node of three).
		# shellcheck disable=SC2086
		bench "$b" "$OUT/$p-$b-$r.json" "$limit" -duration "$DURATION" -queue-prefix "compare-$p" ${ARGS[$p]} \
			-url "$qurl" -broker-pid "${qpid:-0}" || true
		settle
		return
	fi
	# Only the q points need RabbitMQ when only its cluster answers.
	[[ $b == rabbit && -z ${RABBIT_SINGLE_OK:-} && -z ${TABLE_ONLY:-} ]] && return 0
	case $p in
	sc | sd)
		run_stream_point "$p" "$b" "$r"
		;;
	dl)
		# Warren only; a fresh Warren when this script runs it, so RSS is the delayed load's.
		[[ $b == warren ]] || return 0
		if [[ -n $OWN_WARREN ]]; then
			stop_warren
			start_warren
			URL[warren]=$WARREN_URL PID[warren]=$WARREN_PID
		fi
		echo "point dl ($b, run $r/$REPEATS): ${ARGS[dl]}" >&2
		# shellcheck disable=SC2086
		bench "$b" "$OUT/dl-$b-$r.json" 7200 -queue-prefix "compare-dl-$r" ${ARGS[dl]} || true
		;;
	g)
		echo "point g ($b, run $r/$REPEATS): fill $G_MESSAGES, then drain" >&2
		bench "$b" "$OUT/gfill-$b-$r.json" 3600 -queue-prefix compare-g -size 1024 -persistent \
			-pmessages "$G_MESSAGES" -consumers 0 -confirm 256 -keep -duration 50m || true
		bench "$b" "$OUT/gdrain-$b-$r.json" 3600 -queue-prefix compare-g -size 1024 -persistent \
			-drain -consumers 1 -autoack=false -prefetch 100 -multi-ack 10 -duration 50m || true
		;;
	i)
		local n
		n=$(idle_conns "$b")
		echo "point i ($b, run $r/$REPEATS): $n idle connections" >&2
		# shellcheck disable=SC2086
		bench "$b" "$OUT/i-$b-$r.json" 600 ${ARGS[i]} -conns "$n" || true
		;;
	n)
		# A ramp is long (up to one RAMP_STEP per count plus connection set-up): once per broker.
		((r == 1)) || return 0
		echo "point n ($b): ${ARGS[n]}" >&2
		# shellcheck disable=SC2086
		bench "$b" "$OUT/n-$b-$r.json" 3600 -duration "$RAMP_STEP" -queue-prefix compare-n ${ARGS[n]} || true
		;;
	j)
		echo "point j ($b, run $r/$REPEATS): ${ARGS[j]}" >&2
		# shellcheck disable=SC2086
		bench "$b" "$OUT/j-$b-$r.json" 3600 -queue-prefix "compare-j-$r" ${ARGS[j]} || true
		;;
	*)
		if [[ $b == floor ]]; then
			echo "point $p (floor, run $r/$REPEATS): ${FLOOR_ARGS[$p]}" >&2
			# shellcheck disable=SC2086
			bench floor "$OUT/$p-floor-$r.json" "$limit" -duration "$DURATION" ${FLOOR_ARGS[$p]} || true
			settle
			return
		fi
		echo "point $p ($b, run $r/$REPEATS): ${ARGS[$p]}" >&2
		# shellcheck disable=SC2086 # ARGS holds several words on purpose
		bench "$b" "$OUT/$p-$b-$r.json" "$limit" -duration "$DURATION" -queue-prefix "compare-$p" ${ARGS[$p]} || true
		;;
	esac
	settle
}

# run_failover BROKER RUN: point qf (see the header). Writes qfrRUN-BROKER-RUN.json with
# failover_ms, the victim and, for RabbitMQ, the leader before the kill.
run_failover() {
	local b=$1 r=$2 victim pub urls=() f kill_ms leader="" bpid lim=$((QF_AFTER + 60))
	victim=$((3 - (r - 1) % 3))
	pub=1
	((victim == 1)) && pub=2
	if [[ $b == warren ]]; then
		((${#WARREN_QURLS[@]} == 3)) || { echo "  qf: needs the Warren cluster this script starts" >&2; return 0; }
		urls=("${WARREN_QURLS[@]}")
	else
		[[ -n $RABBIT_Q_OK ]] || return 0
		read -ra urls <<<"$(bench/rabbit-cluster.sh urls)"
	fi
	f=$OUT/qfr$r-$b-$r.json
	local q="compare-qf-$r" keep=()
	if [[ $b == warren ]]; then
		# Warren does not say which node leads a queue's group, and a new queue's group tends
		# not to be led by the node it was declared through: one queue for the three runs, so
		# that killing each node in turn kills its leader at least once (the leader changes
		# only when it is killed). Kept until the last run.
		q=compare-qf
		((r < REPEATS)) && keep=(-keep)
	fi
	echo "point qf ($b cluster, run $r/$REPEATS): queue declared on n$victim, publisher on n$pub, kill -9 of n$victim after ${QF_AFTER}s" >&2
	# Declared through the victim, which then leads the queue's group (RabbitMQ's client-local
	# placement; Warren does not say which node leads: the confirm gap tells): a publisher
	# on its own node would keep the leader out of reach of the kill.
	# shellcheck disable=SC2086
	timeout 60 "$BIN" -url "${urls[$((victim - 1))]}" -queue-prefix "$q" ${ARGS[qf]} -pmessages 1 -confirm 1 -keep \
		-duration 30s >/dev/null 2>"${f%.json}.err" || true
	# shellcheck disable=SC2086
	timeout "$lim" "$BIN" -json -url "${urls[$((pub - 1))]}" -queue-prefix "$q" -duration "$((QF_AFTER + 12))s" \
		${ARGS[qf]} "${keep[@]}" >"$f.run" 2>"${f%.json}.err" &
	bpid=$!
	sleep "$QF_AFTER"
	if [[ $b == warren ]]; then
		kill -9 "${QCLUSTER_PIDS[$((victim - 1))]}"
		kill_ms=$(date +%s%3N)
		wait "${QCLUSTER_PIDS[$((victim - 1))]}" 2>/dev/null || true
	else
		leader=$(bench/rabbit-cluster.sh leader "$q-1" || true)
		kill_ms=$(bench/rabbit-cluster.sh kill9 "$victim")
	fi
	if ! wait "$bpid"; then
		echo "  failed: $(tail -n 1 "${f%.json}.err")" >&2
		rm -f "$f.run"
	else
		jq --argjson k "$kill_ms" --arg v "n$victim" --arg l "$leader" \
			'{failover_ms: ([(.confirm_gaps // [])[] | select(.[0] <= $k and .[1] >= $k) | .[1] - $k] | min // 0),
			  confirm_gap_max_ms, confirmed, nacked, victim: $v, leader_before: $l, server, loadavg}' "$f.run" >"$f"
		rm -f "$f.run"
	fi
	# Bring the victim back before the next run (the next kill needs a majority without it).
	if [[ $b == warren ]]; then
		local skip
		skip=$(stat -c %s "$QCLUSTER_DIR/n$victim/log")
		launch_warren_node "$victim"
		await_warren_node "$victim" "$skip"
		((victim == 1)) && WARREN_QPID=${QCLUSTER_PIDS[0]}
	else
		bench/rabbit-cluster.sh restart "$victim"
		((victim == 1)) && RABBIT_QPID=$(pid_of_url "$RABBIT_QURL")
	fi
	sleep 3 # the restarted node catches up with the groups' logs
}

# stream_dir BROKER: where the broker keeps its streams (for sd's disk use), or nothing.
stream_dir() {
	case $1 in
	warren) if [[ -n ${WARREN_STREAM_DIR:-} ]]; then echo "$WARREN_STREAM_DIR"; elif [[ -n $WARREN_STARTED ]]; then echo "$WARREN_DATA/data/streams"; fi ;;
	rabbit) echo "$RABBIT_STREAM_DIR" ;;
	esac
}

# dir_bytes DIR: bytes of the files under DIR (0 if it does not exist yet).
dir_bytes() {
	if [[ -d $1 ]]; then du -sb "$1" | cut -f1; else echo 0; fi
}

# run_stream_point POINT BROKER RUN: sc (publish, read from first, read at 10 offsets) or sd
# (publish, read from first, disk use), on one stream that is deleted at the end.
run_stream_point() {
	local p=$1 b=$2 r=$3 n q dir before after
	if [[ $b == warren && -n $OWN_WARREN ]]; then
		stop_warren
		start_warren
		URL[warren]=$WARREN_URL PID[warren]=$WARREN_PID
	fi
	n=$SC_MESSAGES
	[[ $p == sd ]] && n=$SD_MESSAGES
	q="compare-$p-$r"
	# The publish is bounded by 1 hour per 10M messages at RabbitMQ's worst; the reads likewise.
	local limit=$((3600 * (n / 10000000 + 1)))
	dir=$(stream_dir "$b")
	before=$(dir_bytes "$dir")
	echo "point $p ($b, run $r/$REPEATS): publish $n x 16 B to a stream" >&2
	bench "$b" "$OUT/${p}fill-$b-$r.json" "$limit" -queue-prefix "$q" -stream -size 16 -confirm 256 \
		-consumers 0 -pmessages "$n" -keep -duration "${limit}s" || true
	if [[ $p == sd && -n $dir ]]; then
		sync
		after=$(dir_bytes "$dir")
		jq -n --argjson d $((after - before)) --argjson m "$n" '{disk_bytes: $d, messages: $m, size: 16}' >"$OUT/sddisk-$b-$r.json"
	fi
	echo "point $p ($b, run $r/$REPEATS): read $n from first" >&2
	# shellcheck disable=SC2086
	bench "$b" "$OUT/${p}first-$b-$r.json" "$limit" -queue-prefix "$q" $STREAM_READ -stream-length "$n" \
		-stream-offset first -keep -duration "${limit}s" || true
	if [[ $p == sc ]]; then
		echo "point sc ($b, run $r/$REPEATS): 10 consumers from offsets k*$n/10" >&2
		# shellcheck disable=SC2086
		bench "$b" "$OUT/scspread-$b-$r.json" "$limit" -queue-prefix "$q" $STREAM_READ -stream-length "$n" \
			-stream-offset spread -consumers 10 -keep -duration "${limit}s" || true
		jq -s '{rss_max_bytes: ([.[].rss_max_bytes // 0] | max)}' "$OUT"/sc{fill,first,spread}-"$b-$r".json >"$OUT/scall-$b-$r.json" 2>/dev/null || true
	fi
	# Delete the stream: a one-message run on it without -keep deletes its queue at the end.
	bench "$b" "$OUT/${p}delete-$b-$r.json" 600 -queue-prefix "$q" -stream -consumers 0 -pmessages 1 -confirm 1 || true
	rm -f "$OUT/${p}delete-$b-$r.json"
}

# settle waits (at most 30 s) until every broker whose PID is known has been idle for half a
# second: deleting a deep queue or collecting garbage after a run must not eat into the next
# run, which may be the other broker's.
settle() {
	local pid t0 t1
	sleep 1
	for pid in "${PID[@]}"; do
		[[ -n $pid && -r /proc/$pid/stat ]] || continue
		for _ in $(seq 60); do
			t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
			sleep 0.5
			t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
			((t1 - t0 <= 3)) && break # clock ticks (1/100 s): under 6% of a core
		done
	done
}

for p in $POINTS; do
	[[ -n ${ARGS[$p]:-} ]] || { echo "compare.sh: unknown point $p" >&2; exit 1; }
	[[ -n ${TABLE_ONLY:-} ]] && continue
	for r in $(seq 1 "$REPEATS"); do
		for b in "${BROKERS[@]}"; do
			run_point "$p" "$b" "$r"
		done
		if [[ -n ${FLOOR_ARGS[$p]:-} ]]; then
			run_point "$p" floor "$r"
		fi
	done
done

# stats <file prefix> <broker> <jq expr>: "median spread" over the runs that produced
# a number; spread is (max-min)/median in percent, to show run-to-run noise.
stats() {
	local files=("$OUT/$1-$2-"*.json)
	[[ -e ${files[0]} ]] || { echo "n/a n/a"; return; }
	jq -rs "[.[] | ($3) | numbers] | sort | "'
		if length == 0 then "n/a n/a" else
			(if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end
			 | . * 1000 | round / 1000) as $m
			| "\($m) \(if $m == 0 then "n/a" else ((.[-1] - .[0]) / $m * 100 | round | tostring) + "%" end)"
		end' "${files[@]}"
}

ratio() {
	# A zero divisor is caught here: jq folds a constant division by zero into a compile error.
	if [[ $1 == n/a || $2 == n/a || $2 == "null" || $2 =~ ^0*(\.0*)?$ ]]; then echo "n/a"; return; fi
	jq -n "if $2 == 0 then \"n/a\" else ($1 / $2 * 100 | round) / 100 end" | tr -d '"'
}

# server BROKER: product and version as the broker reported them.
server() {
	local f
	f=$(ls "$OUT"/*-"$1"-*.json 2>/dev/null | head -n 1)
	[[ -n $f ]] && jq -r '.server // "?"' "$f" || echo "?"
}

commit=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
git diff --quiet 2>/dev/null || commit="$commit+changes"
echo
echo "Warren vs RabbitMQ: medians of $REPEATS runs, throughput points $DURATION each, interleaved (raw JSON in $OUT)"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); machine: $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1), $(awk '/MemTotal/ {printf "%.0f GB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
echo "- Warren: $(server warren) (commit $commit), $(go version | cut -d' ' -f3); RabbitMQ: $(server rabbit)"
echo "- load generator: warren-bench ${BENCH_ARGS:-(-client lean)}, on the same host"
echo
echo "| point | scenario | metric | Warren | RabbitMQ | W/R | spread W / R |"
echo "|---|---|---|---:|---:|---:|---:|"
for p in $POINTS; do
	IFS=';' read -ra ms <<<"${METRICS[$p]}"
	desc=${DESC[$p]}
	if [[ $p == i ]]; then
		desc="idle connections (Warren $(idle_conns warren), RabbitMQ $(idle_conns rabbit))"
	fi
	for m in "${ms[@]}"; do
		IFS='~' read -r label expr prefix <<<"$m"
		prefix=${prefix:-$p}
		read -r w ws < <(stats "$prefix" warren "$expr")
		rb="n/a" rs="n/a"
		if [[ " ${BROKERS[*]} " == *" rabbit "* ]]; then
			read -r rb rs < <(stats "$prefix" rabbit "$expr")
		fi
		echo "| $p | $desc | $label | $w | $rb | $(ratio "$w" "$rb") | $ws / $rs |"
	done
done
for p in $POINTS; do
	[[ $p == qf ]] || continue
	for b in "${BROKERS[@]}"; do
		for f in "$OUT"/qfr*-"$b"-*.json; do
			[[ -e $f ]] && echo "- qf ($b): $(jq -r '"killed \(.victim)\(if .leader_before != "" then " (queue leader before: \(.leader_before))" else "" end): first confirm after \(.failover_ms) ms; longest confirm gap \(.confirm_gap_max_ms) ms; confirmed \(.confirmed), nacked \(.nacked // 0)"' "$f")"
		done
	done
done
for p in $POINTS; do
	[[ $p == n ]] || continue
	for b in "${BROKERS[@]}"; do
		f=$OUT/n-$b-1.json
		[[ -e $f ]] && echo "- ramp ($b): $(jq -r '[.ramp[] | "\(.clients): p99 \(.p99_ms) ms, \(.consume_rate | round)/s, load \(.loadavg // "?")"] | join("; ")' "$f"); stopped: $(jq -r '.ramp_stop // "?"' "$f")"
	done
done
floor_points=""
for p in $POINTS; do
	if [[ -n ${FLOOR_ARGS[$p]:-} ]]; then floor_points+=" $p"; fi
done
if [[ -n $floor_points ]]; then
	echo
	echo "Against the floor (a bare forwarder; acks read and dropped for l, none for m; same load, same host, interleaved with the brokers):"
	echo
	echo "| point | metric | Warren | RabbitMQ | floor | W/floor | R/floor |"
	echo "|---|---|---:|---:|---:|---:|---:|"
	for p in $floor_points; do
		for m in "broker CPU us/msg (lo)~.broker_us_per_msg" "broker CPU % of a core (lo)~.broker_cpu_percent" "e2e p99 ms (lo)~.latency.p99_ms" "RSS MB (lo)~.rss_bytes / 1e6 | round"; do
			IFS='~' read -r label expr <<<"$m"
			read -r w _ < <(stats "$p" warren "$expr")
			read -r rb _ < <(stats "$p" rabbit "$expr")
			read -r f _ < <(stats "$p" floor "$expr")
			echo "| $p | $label | $w | $rb | $f | $(ratio "$w" "$f") | $(ratio "$rb" "$f") |"
		done
	done
fi
echo
load=$(jq -s '[.[].loadavg // 0] | max' "$OUT"/*.json 2>/dev/null || echo "?")
echo "Highest 1-min load average seen at the end of a run: $load (on a shared or small host, treat ratios with care)."

#!/usr/bin/env bash
# rabbit-cluster.sh - a 3-node RabbitMQ cluster on this machine, for issue 21's quorum-queue
# comparison (bench/compare.sh points q1, q4 and qf).
#
#   bench/rabbit-cluster.sh start    start rq1@localhost, rq2@localhost, rq3@localhost and join them
#   bench/rabbit-cluster.sh stop     stop those three nodes and delete their data
#   bench/rabbit-cluster.sh status   cluster_status as rq1 sees it
#   bench/rabbit-cluster.sh urls     the three AMQP URLs, space-separated
#   bench/rabbit-cluster.sh leader Q  the node leading quorum queue Q (vhost /): rq1, rq2 or rq3
#   bench/rabbit-cluster.sh kill9 N   kill -9 node rqN (its beam.smp); prints the Unix ms of the kill
#   bench/rabbit-cluster.sh restart N start rqN again (it rejoins from its data) and wait for it
#
# The nodes are independent of the system RabbitMQ (rabbit@host on 5672, which other people use):
# their own RABBITMQ_NODENAME, RABBITMQ_NODE_PORT (RQ_PORT, RQ_PORT+1, RQ_PORT+2; default 5681),
# RABBITMQ_DIST_PORT (RQ_DIST_PORT.. ; default 25681), an empty config file (the system's
# /etc/rabbitmq files are not read: no rabbitmq-env.conf, no plugins, so no management or
# Prometheus listener), and RABBITMQ_MNESIA_BASE / RABBITMQ_LOG_BASE under RQ_DIR
# (default /tmp/warren-rabbit-cluster). They share the system's epmd (port 4369), as every
# Erlang node on a host does. This script only ever addresses rq1..rq3 by name.
#
# The Erlang cookie is the system one (/var/lib/rabbitmq/.erlang.cookie), copied into RQ_DIR/home
# (mode 400) and used as HOME for the nodes and for rabbitmqctl. Run as root: the nodes run as
# root through /usr/lib/rabbitmq/bin (the /usr/sbin wrappers would su to the rabbitmq user and
# read /etc/rabbitmq).
#
# By hand, the same thing is, per node N (1..3):
#   RABBITMQ_NODENAME=rqN@localhost RABBITMQ_NODE_PORT=568N RABBITMQ_DIST_PORT=2568N \
#   RABBITMQ_MNESIA_BASE=/tmp/rq/mnesia RABBITMQ_LOG_BASE=/tmp/rq/log \
#   RABBITMQ_CONFIG_FILE=/tmp/rq/rqN.conf RABBITMQ_ENABLED_PLUGINS_FILE=/tmp/rq/plugins \
#   RABBITMQ_CONF_ENV_FILE=/tmp/rq/env HOME=/tmp/rq/home rabbitmq-server -detached
# then for rq2 and rq3: rabbitmqctl -n rqN@localhost stop_app; rabbitmqctl -n rqN@localhost
# join_cluster rq1@localhost; rabbitmqctl -n rqN@localhost start_app.
set -euo pipefail

RQ_DIR=${RQ_DIR:-/tmp/warren-rabbit-cluster}
RQ_PORT=${RQ_PORT:-5681}
RQ_DIST_PORT=${RQ_DIST_PORT:-25681}
RQ_COOKIE=${RQ_COOKIE:-/var/lib/rabbitmq/.erlang.cookie}
RQ_BIN=${RQ_BIN:-/usr/lib/rabbitmq/bin}
NODES=(rq1 rq2 rq3)

# env_for I: the environment of node I (0-based), as arguments for env(1).
env_for() {
	local i=$1 n=${NODES[$1]}
	echo "HOME=$RQ_DIR/home" \
		"RABBITMQ_NODENAME=$n@localhost" \
		"RABBITMQ_NODE_PORT=$((RQ_PORT + i))" \
		"RABBITMQ_DIST_PORT=$((RQ_DIST_PORT + i))" \
		"RABBITMQ_MNESIA_BASE=$RQ_DIR/mnesia" \
		"RABBITMQ_LOG_BASE=$RQ_DIR/log" \
		"RABBITMQ_PID_FILE=$RQ_DIR/$n.pid" \
		"RABBITMQ_CONFIG_FILE=$RQ_DIR/$n.conf" \
		"RABBITMQ_ADVANCED_CONFIG_FILE=$RQ_DIR/advanced.config" \
		"RABBITMQ_ENABLED_PLUGINS_FILE=$RQ_DIR/enabled_plugins" \
		"RABBITMQ_CONF_ENV_FILE=$RQ_DIR/rabbitmq-env.conf"
}

# launch I: start node I (0-based) in the background.
launch() {
	# shellcheck disable=SC2046 # env_for yields one word per variable on purpose
	env $(env_for "$1") "$RQ_BIN/rabbitmq-server" -detached
}

# await NODE: wait until NODE has booted.
await() {
	local n=$1 t
	# await_startup needs the node registered with epmd first: poll until it answers.
	for t in $(seq 120); do
		ctl "$n" ping >/dev/null 2>&1 && break
		((t < 120)) || { echo "rabbit-cluster.sh: $n did not start; see $RQ_DIR/log" >&2; exit 1; }
		sleep 0.5
	done
	ctl "$n" await_startup --timeout 120
}

# node_index N: 0-based index of rqN, or an error.
node_index() {
	[[ $1 =~ ^[123]$ ]] || { echo "rabbit-cluster.sh: node number $1: want 1, 2 or 3" >&2; exit 2; }
	echo $(($1 - 1))
}

ctl() {
	local n=$1
	shift
	HOME=$RQ_DIR/home "$RQ_BIN/rabbitmqctl" -q -n "$n@localhost" "$@"
}

start() {
	[[ $(id -u) == 0 ]] || { echo "rabbit-cluster.sh: run as root" >&2; exit 1; }
	if [[ -d $RQ_DIR ]]; then
		echo "rabbit-cluster.sh: $RQ_DIR exists (a cluster running, or a stale one: stop first)" >&2
		exit 1
	fi
	local i port
	for ((i = 0; i < 3; i++)); do
		for port in $((RQ_PORT + i)) $((RQ_DIST_PORT + i)); do
			if ss -ltnH "sport = :$port" | grep -q .; then
				echo "rabbit-cluster.sh: port $port is in use (set RQ_PORT / RQ_DIST_PORT)" >&2
				exit 1
			fi
		done
	done
	mkdir -p "$RQ_DIR/home" "$RQ_DIR/mnesia" "$RQ_DIR/log"
	install -m 400 "$RQ_COOKIE" "$RQ_DIR/home/.erlang.cookie"
	echo "[]." >"$RQ_DIR/enabled_plugins"
	echo "[]." >"$RQ_DIR/advanced.config"
	: >"$RQ_DIR/rabbitmq-env.conf"
	for ((i = 0; i < 3; i++)); do
		# Loopback only, and guest may log in from there (as on the system node).
		printf 'listeners.tcp.default = 127.0.0.1:%d\n' $((RQ_PORT + i)) >"$RQ_DIR/${NODES[$i]}.conf"
		launch "$i"
	done
	for n in "${NODES[@]}"; do
		await "$n"
	done
	for n in "${NODES[@]:1}"; do
		ctl "$n" stop_app
		ctl "$n" join_cluster rq1@localhost
		ctl "$n" start_app
	done
	ctl rq1 cluster_status --formatter json | jq -c "{running_nodes}" >&2
	echo "rabbit-cluster.sh: started; AMQP on $(urls)" >&2
}

stop() {
	local n
	for n in "${NODES[@]}"; do
		if [[ -f $RQ_DIR/$n.pid ]] && kill -0 "$(cat "$RQ_DIR/$n.pid")" 2>/dev/null; then
			ctl "$n" stop "$RQ_DIR/$n.pid" || true
		fi
	done
	rm -rf "$RQ_DIR"
}

urls() {
	local i out=()
	for ((i = 0; i < 3; i++)); do
		out+=("amqp://guest:guest@127.0.0.1:$((RQ_PORT + i))/")
	done
	echo "${out[*]}"
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) ctl rq1 cluster_status ;;
urls) urls ;;
leader)
	# Any running node answers; the leader is reported as rqN@localhost.
	for n in "${NODES[@]}"; do
		if out=$(ctl "$n" list_queues name leader --formatter json 2>/dev/null); then
			jq -r --arg q "${2:?queue name}" '.[] | select(.name == $q) | .leader | sub("@.*"; "")' <<<"$out"
			exit 0
		fi
	done
	exit 1
	;;
kill9)
	i=$(node_index "${2:-}")
	pid=$(cat "$RQ_DIR/${NODES[$i]}.pid")
	kill -9 "$pid"
	date +%s%3N
	;;
restart)
	i=$(node_index "${2:-}")
	launch "$i"
	await "${NODES[$i]}"
	;;
*)
	echo "usage: $0 start|stop|status|urls|leader QUEUE|kill9 N|restart N" >&2
	exit 2
	;;
esac

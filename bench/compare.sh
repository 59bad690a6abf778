#!/usr/bin/env bash
# compare.sh - run the fixed benchmark matrix against Warren and RabbitMQ and
# print a markdown table of medians, the Warren/RabbitMQ ratio and the
# run-to-run spread.
#
# Runs are interleaved (W,R,W,R,...) per point so drift in machine load hits
# both brokers alike. RabbitMQ is skipped if it does not answer.
#
# Environment:
#   WARREN_URL  Warren broker URL (required), e.g. amqp://guest:guest@127.0.0.1:5673/
#   RABBIT_URL  RabbitMQ URL (default amqp://guest:guest@127.0.0.1:5672/)
#   DURATION    per-run duration (default 10s)
#   REPEATS     runs per broker per point (default 3)
#   POINTS      subset of points to run, e.g. "a c f" (default: all)
#   OUT         directory for the raw JSON results (default: a new temp dir)
#   BENCH_BIN   prebuilt warren-bench binary (default: built once into /tmp)
#
# Needs jq. Usage: WARREN_URL=... bench/compare.sh
set -euo pipefail

cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "compare.sh: jq is required" >&2; exit 1; }
: "${WARREN_URL:?set WARREN_URL to the Warren broker URL}"
RABBIT_URL=${RABBIT_URL:-amqp://guest:guest@127.0.0.1:5672/}
DURATION=${DURATION:-10s}
REPEATS=${REPEATS:-3}
POINTS=${POINTS:-a b c d e f h}
OUT=${OUT:-$(mktemp -d /tmp/warren-compare.XXXXXX)}
mkdir -p "$OUT"

BIN=${BENCH_BIN:-}
if [[ -z $BIN ]]; then
	BIN=/tmp/warren-bench-compare
	go build -o "$BIN" ./bench/cmd/warren-bench
fi

# point -> description and bench arguments
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
DESC[h]="connection churn (open conn+channel, close)"
ARGS[h]="-mode churn"

# point -> "label|jq expression" metrics, separated by ';'
declare -A METRICS
THR="recv msg/s (hi)|.consume_rate;sent msg/s (hi)|.publish_rate;e2e p50 ms (lo)|.latency.p50_ms"
METRICS[a]=$THR
METRICS[b]=$THR
METRICS[c]="recv msg/s (hi)|.consume_rate;confirmed msg/s (hi)|.confirm_rate;confirm p50 ms (lo)|.confirm_latency.p50_ms;confirm p99 ms (lo)|.confirm_latency.p99_ms"
METRICS[d]=$THR
METRICS[e]=$THR
METRICS[f]="confirmed msg/s (hi)|.confirm_rate;confirm p50 ms (lo)|.confirm_latency.p50_ms;confirm p99 ms (lo)|.confirm_latency.p99_ms;e2e p50 ms (lo)|.latency.p50_ms"
METRICS[h]="connections/s (hi)|.conn_rate;open+close p50 ms (lo)|.conn_latency.p50_ms"

reachable() {
	timeout 15 "$BIN" -url "$1" -mode queues -count 1 -queue-prefix compare-probe -json >/dev/null 2>&1
}

BROKERS=(warren)
declare -A URL=([warren]=$WARREN_URL [rabbit]=$RABBIT_URL)
reachable "$WARREN_URL" || { echo "compare.sh: Warren not reachable at $WARREN_URL" >&2; exit 1; }
if reachable "$RABBIT_URL"; then
	BROKERS+=(rabbit)
else
	echo "compare.sh: RabbitMQ not reachable at $RABBIT_URL, skipping it" >&2
fi

# Runs are killed if they overrun their duration by a minute.
case $DURATION in
*ms) secs=1 ;;
*s) secs=${DURATION%s} ;;
*m) secs=$((${DURATION%m} * 60)) ;;
*) secs=600 ;;
esac
limit=$((${secs%%.*} + 60))

for p in $POINTS; do
	[[ -n ${ARGS[$p]:-} ]] || { echo "compare.sh: unknown point $p" >&2; exit 1; }
	for r in $(seq 1 "$REPEATS"); do
		for b in "${BROKERS[@]}"; do
			f="$OUT/$p-$b-$r.json"
			echo "point $p ($b, run $r/$REPEATS): ${ARGS[$p]}" >&2
			# shellcheck disable=SC2086 # ARGS holds several words on purpose
			if ! timeout "$limit" "$BIN" -url "${URL[$b]}" -duration "$DURATION" -json \
				-queue-prefix "compare-$p" ${ARGS[$p]} >"$f" 2>"$OUT/$p-$b-$r.err"; then
				echo "  failed: $(tail -n 1 "$OUT/$p-$b-$r.err")" >&2
				rm -f "$f"
			fi
			sleep 1 # let the broker settle (queue deletion, GC) before the next run
		done
	done
done

# stats <point> <broker> <jq expr>: "median spread" over the runs that produced
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
	if [[ $1 == n/a || $2 == n/a || $2 == "null" ]]; then echo "n/a"; return; fi
	jq -n "if $2 == 0 then \"n/a\" else ($1 / $2 * 100 | round) / 100 end" | tr -d '"'
}

echo
echo "Warren vs RabbitMQ: medians of $REPEATS runs x $DURATION, interleaved (raw JSON in $OUT)"
echo
echo "| point | scenario | metric | Warren | RabbitMQ | W/R | spread W / R |"
echo "|---|---|---|---:|---:|---:|---:|"
for p in $POINTS; do
	IFS=';' read -ra ms <<<"${METRICS[$p]}"
	for m in "${ms[@]}"; do
		label=${m%%|*}
		expr=${m#*|}
		read -r w ws < <(stats "$p" warren "$expr")
		rb="n/a" rs="n/a"
		if [[ " ${BROKERS[*]} " == *" rabbit "* ]]; then
			read -r rb rs < <(stats "$p" rabbit "$expr")
		fi
		echo "| $p | ${DESC[$p]} | $label | $w | $rb | $(ratio "$w" "$rb") | $ws / $rs |"
	done
done
echo
load=$(jq -s '[.[].loadavg // 0] | max' "$OUT"/*.json 2>/dev/null || echo "?")
echo "Highest 1-min load average seen at the end of a run: $load (on a shared or small host, treat ratios with care)."

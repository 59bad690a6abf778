#!/usr/bin/env bash
# Interoperability suite: drives a broker with the AMQP 0-9-1 clients of other
# languages (Python pika, py-amqp + kombu, Node amqplib, Java com.rabbitmq.client,
# Ruby Bunny, PHP php-amqplib, and the C client's amqp-tools) and prints one
# "PASS|FAIL|SKIP <client> <case>" line per case, then "N passed, M failed[, K skipped]".
#
# Broker: AMQP_URL (amqp://user:pass@host:port/vhost), or AMQP_HOST/AMQP_PORT
# (+ AMQP_USER/AMQP_PASS/AMQP_VHOST); otherwise Warren is built from this repo and
# started on a free loopback port with a temporary data dir.
#
# Knobs: INTEROP_CLIENTS="pika java ..." runs a subset; INTEROP_SERIAL=1 runs the
# clients one after another; INTEROP_SKIP_INSTALL=1 skips the install step;
# INTEROP_WAIT (s, each wait), INTEROP_CASE_LIMIT (s, each case),
# INTEROP_PROGRAM_LIMIT (s, each client program).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ALL_CLIENTS="pika py-amqp kombu amqplib java bunny php-amqplib amqp-tools"
CLIENTS=${INTEROP_CLIENTS:-$ALL_CLIENTS}
export INTEROP_WAIT=${INTEROP_WAIT:-5}
export INTEROP_CASE_LIMIT=${INTEROP_CASE_LIMIT:-10}
PROGRAM_LIMIT=${INTEROP_PROGRAM_LIMIT:-60}
PY=/usr/bin/python3 # Debian's python3-* packages live there, whatever python3 is on PATH

tmp=$(mktemp -d)
BROKER_PID=
cleanup() {
  if [ -n "$BROKER_PID" ]; then
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

log() { echo "# $*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- install ---

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

install_deps() {
  local t0 need=() p
  t0=$(now)
  for p in python3-pika python3-kombu python3-amqp librabbitmq-client-java libslf4j-java \
    ruby-bunny php-cli php-amqplib amqp-tools; do
    installed "$p" || need+=("$p")
  done
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing: ${need[*]}"
    if [ "$(id -u)" -ne 0 ]; then
      echo "run.sh: missing packages (${need[*]}) and not root to install them" >&2
      exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log" >&2; exit 2; }
    apt-get install -y -qq "${need[@]}" >>"$tmp/apt.log" 2>&1 || { tail -30 "$tmp/apt.log" >&2; exit 2; }
  fi
  # Node amqplib from the committed lock file; npm ci only when the installed tree differs.
  local want have
  want=$(node -e 'console.log(require(process.argv[1]).packages["node_modules/amqplib"].version)' \
    "$HERE/node/package-lock.json")
  have=$(node -e 'try { console.log(require(process.argv[1]).version) } catch (e) { console.log("none") }' \
    "$HERE/node/node_modules/amqplib/package.json")
  if [ "$want" != "$have" ]; then
    log "npm ci (amqplib $want)"
    (cd "$HERE/node" && npm ci --no-audit --no-fund --loglevel=error >"$tmp/npm.log" 2>&1) ||
      { cat "$tmp/npm.log" >&2; exit 2; }
  fi
  log "dependencies ready in $(elapsed "$t0") s"
}

if [ "${INTEROP_SKIP_INSTALL:-0}" != 1 ]; then
  install_deps
fi

# ----------------------------------------------------------------- broker ---

urldecode() { local s=${1//+/ }; printf '%b' "${s//%/\\x}"; }

FINAL_FAILED=0
broker_fail() { # no broker: one FAIL line and the summary
  echo "FAIL broker start: $*"
  echo "0 passed, 1 failed"
  exit 1
}

if [ -n "${AMQP_URL:-}" ]; then
  re='^amqps?://(([^:@/]*)(:([^@/]*))?@)?([^:/?]+)(:([0-9]+))?(/([^?]*))?'
  [[ $AMQP_URL =~ $re ]] || { echo "run.sh: cannot parse AMQP_URL=$AMQP_URL" >&2; exit 2; }
  AMQP_USER=$(urldecode "${BASH_REMATCH[2]:-guest}")
  AMQP_PASS=$(urldecode "${BASH_REMATCH[4]:-guest}")
  AMQP_HOST=${BASH_REMATCH[5]}
  AMQP_PORT=${BASH_REMATCH[7]:-5672}
  AMQP_VHOST=$(urldecode "${BASH_REMATCH[9]:-}")
  [ -n "$AMQP_VHOST" ] || AMQP_VHOST=/
  log "broker: $AMQP_HOST:$AMQP_PORT vhost $AMQP_VHOST (AMQP_URL)"
elif [ -n "${AMQP_HOST:-}" ] || [ -n "${AMQP_PORT:-}" ]; then
  AMQP_HOST=${AMQP_HOST:-127.0.0.1}
  AMQP_PORT=${AMQP_PORT:-5672}
  log "broker: $AMQP_HOST:$AMQP_PORT (AMQP_HOST/AMQP_PORT)"
else
  log "building Warren"
  (cd "$ROOT" && go build -o "$tmp/warren" .) >"$tmp/build.log" 2>&1 ||
    broker_fail "go build failed: $(tail -5 "$tmp/build.log" | tr '\n' ' ')"
  AMQP_HOST=127.0.0.1
  AMQP_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$tmp/data"
  WARREN_MANAGEMENT_LISTEN=127.0.0.1:0 WARREN_PROMETHEUS_LISTEN=127.0.0.1:0 "$tmp/warren" -listen "127.0.0.1:$AMQP_PORT" -data-dir "$tmp/data" >"$tmp/warren.log" 2>&1 &
  BROKER_PID=$!
  up=0
  for _ in $(seq 1 300); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      broker_fail "warren exited: $(tail -5 "$tmp/warren.log" | tr '\n' ' ')"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$AMQP_PORT") 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  [ "$up" = 1 ] || broker_fail "warren not accepting connections on port $AMQP_PORT after 30 s"
  log "broker: Warren pid $BROKER_PID on 127.0.0.1:$AMQP_PORT"
fi
export AMQP_HOST AMQP_PORT
export AMQP_USER=${AMQP_USER:-guest} AMQP_PASS=${AMQP_PASS:-guest} AMQP_VHOST=${AMQP_VHOST:-/}

# ---------------------------------------------------------------- clients ---

FULL_CASES="connect auth-refused direct fanout topic headers properties large-body ack-nack-requeue
confirms tx-commit tx-rollback basic-get get-empty mandatory-return consumer-cancel-notify"

cases_of() {
  case $1 in
    kombu) echo "connect auth-refused topic-properties simple-queue" ;;
    pika | amqplib) echo "$FULL_CASES priority direct-reply-to" ;;
    amqp-tools) echo "connect auth-refused direct fanout topic headers properties-publish properties
      large-body ack unacked-requeue ack-nack-requeue confirms tx-commit tx-rollback basic-get get-empty
      mandatory-return consumer-cancel-notify" ;;
    *) echo "$FULL_CASES" ;;
  esac
}

JAVA_CP="$tmp/java:/usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar"
if [ -f /usr/share/java/slf4j-nop.jar ]; then JAVA_CP="$JAVA_CP:/usr/share/java/slf4j-nop.jar"; fi

run_client() { # $1 = client; stdout = its result lines
  local lim="timeout -k 5 $PROGRAM_LIMIT"
  case $1 in
    pika) cd "$HERE/python" && $lim "$PY" -B pika_interop.py ;;
    py-amqp) cd "$HERE/python" && $lim "$PY" -B pyamqp_interop.py ;;
    kombu) cd "$HERE/python" && $lim "$PY" -B pyamqp_interop.py kombu ;;
    amqplib) cd "$HERE/node" && $lim node interop.js ;;
    java)
      mkdir -p "$tmp/java"
      timeout 120 javac -nowarn -cp /usr/share/java/amqp-client.jar -d "$tmp/java" "$HERE/java/Interop.java" >&2 ||
        { echo "FAIL java compile: javac failed"; return 1; }
      $lim java -cp "$JAVA_CP" Interop
      ;;
    bunny) cd "$HERE/ruby" && $lim ruby interop.rb ;;
    php-amqplib) cd "$HERE/php" && $lim php interop.php ;;
    amqp-tools) cd "$HERE/c" && $lim bash interop.sh ;;
    *) echo "FAIL $1 unknown-client: no such client"; return 1 ;;
  esac
}

t_run=$(now)
mkdir -p "$tmp/out"
pids=()
for c in $CLIENTS; do
  (
    t0=$(now)
    rc=0
    run_client "$c" >"$tmp/out/$c.lines" 2>"$tmp/out/$c.err" </dev/null || rc=$?
    echo "$rc $(elapsed "$t0")" >"$tmp/out/$c.rc"
  ) &
  pids+=($!)
  if [ "${INTEROP_SERIAL:-0}" = 1 ]; then wait $!; fi
done
# Only the clients: a bare wait would also wait for the broker.
wait "${pids[@]}"

passed=0 failed=0 skipped=0
for c in $CLIENTS; do
  read -r rc secs <"$tmp/out/$c.rc"
  log "$c: exit $rc in $secs s"
  # Keep only well-formed result lines of this client; anything else is noise.
  grep -E "^(PASS|FAIL|SKIP) $c [^ ]+" "$tmp/out/$c.lines" >"$tmp/out/$c.ok" || true
  cat "$tmp/out/$c.ok"
  for k in $(cases_of "$c"); do
    if ! grep -qE "^(PASS|FAIL|SKIP) $c $k(:|$)" "$tmp/out/$c.ok"; then
      case $rc in
        0) why="no result" ;;
        124 | 137) why="no result: program killed after ${PROGRAM_LIMIT} s" ;;
        *) why="no result: program exited with status $rc" ;;
      esac
      echo "FAIL $c $k: $why"
      echo "FAIL $c $k: $why" >>"$tmp/out/$c.ok"
    fi
  done
  if [ "$rc" != 0 ] && ! grep -q "^FAIL " "$tmp/out/$c.ok"; then
    echo "FAIL $c exit-status: program exited with status $rc"
    echo "FAIL $c exit-status: program exited with status $rc" >>"$tmp/out/$c.ok"
  fi
  if grep -q "^FAIL " "$tmp/out/$c.ok" && [ -s "$tmp/out/$c.err" ]; then
    tail -n 5 "$tmp/out/$c.err" | sed 's/^/#   stderr: /'
  fi
  passed=$((passed + $(grep -c "^PASS " "$tmp/out/$c.ok" || true)))
  failed=$((failed + $(grep -c "^FAIL " "$tmp/out/$c.ok" || true)))
  skipped=$((skipped + $(grep -c "^SKIP " "$tmp/out/$c.ok" || true)))
done
log "clients ran in $(elapsed "$t_run") s"
if [ -n "$BROKER_PID" ] && [ "$failed" -gt 0 ]; then
  tail -n 20 "$tmp/warren.log" | sed 's/^/#   warren: /'
fi

summary="$passed passed, $failed failed"
if [ "$skipped" -gt 0 ]; then summary="$summary, $skipped skipped"; fi
echo "$summary"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# Plays the hostile-client catalogue (conformance/hostile) against a Warren started in the background
# on a free port with a fresh data directory, twice: normally, and with the memory alarm held on for
# the blocked-publisher cases. Run from the repository root; .ci/run calls it.
set -euo pipefail
section() { printf "\n==== %s ====\n" "$*"; }
section "conformance/hostile: hostile clients against a background Warren"
hdir="$(mktemp -d)"
go build -o "${hdir}/warren" .
go build -o "${hdir}/hostile" ./conformance/hostile
cat >"${hdir}/hostile.yaml" <<'YAML'
users:
  - {name: guest, password: guest, tags: [administrator]}
  - {name: hostile-ro, password: hostile-ro}
permissions:
  - {user: guest, vhost: /, configure: .*, write: .*, read: .*}
  - {user: hostile-ro, vhost: /, configure: "^$", write: "^$", read: .*}
YAML
# hostile WARREN_ENV... -- FLAGS...: start Warren on a free port with a fresh data dir, play the
# catalogue against it, stop it.
hostile() {
	local wenv=()
	while [[ $# -gt 0 && "$1" != "--" ]]; do wenv+=("$1"); shift; done
	shift
	local data addr="" pid rc=0
	data="$(mktemp -d)"
	env WARREN_MANAGEMENT_LISTEN=127.0.0.1:0 WARREN_PROMETHEUS_LISTEN=127.0.0.1:0 "${wenv[@]}" "${hdir}/warren" -config "${hdir}/hostile.yaml" -listen 127.0.0.1:0 -data-dir "${data}/store" >"${data}/log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		addr="$(sed -n 's/.*msg="warren ready" addr=\([^ ]*\).*/\1/p' "${data}/log")"
		[[ -n "${addr}" ]] && break
		sleep 0.1
	done
	[[ -n "${addr}" ]] || { cat "${data}/log"; kill "${pid}"; return 1; }
	"${hdir}/hostile" -url "amqp://guest:guest@${addr}/" -restricted-url "amqp://hostile-ro:hostile-ro@${addr}/" \
		-pid "${pid}" -rss-max-mib 512 "$@" || rc=$?
	kill "${pid}"
	wait "${pid}" || true
	rm -rf "${data}"
	return "${rc}"
}
# Both runs report before CI fails; the second keeps Warren's memory alarm on throughout (its
# alarm cannot be raised while it runs) for the blocked-publisher cases.
hostile_rc=0
hostile -- || hostile_rc=1
hostile WARREN_MEMORY_LIMIT=1 -- -alarm-on -run "^alarm-" || hostile_rc=1
rm -rf "${hdir}"
[[ "${hostile_rc}" == 0 ]]

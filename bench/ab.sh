#!/usr/bin/env bash
# A/B of two enforcer binaries, both on the proxies' CPU at the same time:
#
#   scripts/bench ab OLD_BINARY NEW_BINARY [ROUNDS]
#
# Run one after the other, two binaries are compared across different host conditions (this
# VM swings by ±15 % between runs). Here both run at once on CPU 1, each behind its own wrk
# (32 connections, CPU 0) with the benchmark's mix, so they share every second of the host's
# noise; each round prints the CPU time each spent per request over the same 8 seconds. A
# small position bias remains (a few %): run it again with the binaries swapped.
#
# Uses the session pool, request cycle, OpenAPI document and Enforce config of the last
# `scripts/bench` run (target/bench/work/). Both enforcers learn from the same 2,000 sessions
# and see the same 100,000 sessions before the measured rounds.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $# -ge 2 ]] || { sed -n '2,4p' "$0" >&2; exit 2; }
old="$1" new="$2" rounds="${3:-4}"
src="${ORDO_BENCH_OUT:-target/bench}/work"
for f in cycle.lua sessions.tsv openapi.yaml ordo-enforce.yaml; do
  [[ -f $src/$f ]] || { echo "bench/ab.sh: $src/$f is missing: run scripts/bench first" >&2; exit 1; }
done
for bin in "$old" "$new" target/release/ordo-bench; do
  [[ -x $bin ]] || { echo "bench/ab.sh: $bin is not an executable" >&2; exit 1; }
done

work="$(mktemp -d -t ordo-ab.XXXXXX)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "${ORDO_AB_KEEP:-}" ]] || rm -rf "$work"
}
trap cleanup EXIT INT TERM
cp "$src/cycle.lua" "$src/sessions.tsv" "$src/openapi.yaml" "$work/"

# Free loopback ports: nothing answers a connect.
port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
upstream_port=$(port)
# Waits until something listens on PORT (a port is only taken once its owner listens).
listening() {
  local i
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench/ab.sh: nothing listens on 127.0.0.1:$1 (logs in $work; ORDO_AB_KEEP=1 keeps them)" >&2
  return 1
}
taskset -c 0 target/release/ordo-bench upstream --listen "127.0.0.1:$upstream_port" >"$work/upstream.log" 2>&1 &
pids+=($!)
listening "$upstream_port"

# The last run's Enforce config with this run's ports and paths.
start() { # NAME BINARY -> prints "PID PORT"
  local proxy admin
  proxy=$(port) admin=$(port)
  awk -v p="$proxy" -v a="$admin" -v u="$upstream_port" -v o="$work/openapi.yaml" '
    /^listen:/ { print "listen: \"127.0.0.1:" p "\""; next }
    /^  listen:/ { print "  listen: \"127.0.0.1:" a "\""; next }
    /^  url:/ { print "  url: \"http://127.0.0.1:" u "\""; next }
    /path: .*openapi.yaml/ { print "  path: \"" o "\""; next }
    { print }' "$src/ordo-enforce.yaml" >"$work/$1.yaml"
  ORDO_WORKERS=1 ORDO_LOG=warn taskset -c 1 "$2" --config "$work/$1.yaml" >"$work/$1.log" 2>&1 &
  echo "$! $proxy"
}
read -r pid_a port_a < <(start a "$old")
pids+=("$pid_a")
listening "$port_a"
read -r pid_b port_b < <(start b "$new")
pids+=("$pid_b")
listening "$port_b"

wrk_run() { # PORT FIRST COUNT STEP OUT
  ORDO_WRK_OUT="$5" taskset -c 0 wrk -t 1 -c 32 -d 8s --timeout 10s -s bench/wrk/mix.lua \
    "http://127.0.0.1:$1" -- "$work" "$2" "$3" "$4" >/dev/null 2>&1
}
both() { # FIRST COUNT STEP TAG
  wrk_run "$port_a" "$1" "$2" "$3" "$work/a-$4.json" &
  local w=$!
  wrk_run "$port_b" "$1" "$2" "$3" "$work/b-$4.json"
  wait "$w"
}
requests() { sed -E 's/.*"requests":([0-9]+).*/\1/' "$1"; }
non_2xx() { sed -E 's/.*"status":([0-9]+).*/\1/' "$1"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

echo "learning (2,000 sessions), then 100,000 live sessions, on both" >&2
both 100000 2000 0 learn
both 0 100000 0 warm
hz=$(getconf CLK_TCK)
echo "CPU us per request (user + system), both binaries measured over the same seconds (B/A < 1: B is cheaper):"
for r in $(seq 1 "$rounds"); do
  a0=$(cpu_ticks "$pid_a") b0=$(cpu_ticks "$pid_b")
  both 0 100000 "$r" "round$r"
  a1=$(cpu_ticks "$pid_a") b1=$(cpu_ticks "$pid_b")
  ra=$(requests "$work/a-round$r.json") rb=$(requests "$work/b-round$r.json")
  awk -v r="$r" -v a="$(basename "$old")" -v b="$(basename "$new")" -v ca=$((a1 - a0)) -v cb=$((b1 - b0)) \
    -v ra="$ra" -v rb="$rb" -v hz="$hz" -v na="$(non_2xx "$work/a-round$r.json")" -v nb="$(non_2xx "$work/b-round$r.json")" \
    'BEGIN { ua = ca * 1e6 / hz / ra; ub = cb * 1e6 / hz / rb;
             printf "round %d: A %s %.1f (%d req, %d non-2xx) | B %s %.1f (%d req, %d non-2xx) | B/A %.3f\n",
                    r, a, ua, ra, na, b, ub, rb, nb, ub / ua;
             if (na + nb > 0) { print "bench/ab.sh: refused requests: the comparison is void" > "/dev/stderr"; exit 1 } }'
done

#!/usr/bin/env bash
# Fleet behaviour on loopback: three `jotd serve` replicas behind one
# `jotd-load run` with all three endpoints, open loop at half of the pool's
# capacity (ES256 × 64 by default).
#
# 1. kill: `kill -9` of replica 1 at KILL_AT s, restarted at RESTART_AT s.
# 2. rolling: SIGTERM, wait for exit, restart, wait until serving; replica 1,
#    then 2, then 3.
# 3. hedging cost: the pool's daemon CPU per token at the same rate with
#    hedging on and off (alternating rounds).
#
# Each run prints the harness's verdict: failed batches, missing/duplicated
# or wrong decisions (the harness exits non-zero on any), latency, and the
# client's retries, hedges, late duplicates and ejections.
#
#   benches/failover.sh
#   NO_BUILD=1 BIN=/tmp/bin benches/failover.sh
#
# Env: BIN (default target/release), NO_BUILD, ALG (default ES256), RATE
# (tokens/s; default: half of the measured peak, at most 20000), DURATION
# (default 20), KILL_AT (default 5), RESTART_AT (default 12), ROUNDS (hedging
# cost rounds, default 3), THREADS (verification threads per replica,
# default 1), CACHE (the verified-token cache, default false: every token
# is verified, so half of the peak is a real half of the pool's capacity).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release}
ALG=${ALG:-ES256}
DURATION=${DURATION:-20}
KILL_AT=${KILL_AT:-5}
RESTART_AT=${RESTART_AT:-12}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-1}
CACHE=${CACHE:-false}
# shellcheck source=benches/common.sh
source benches/common.sh
TICKS=$(getconf CLK_TCK)

"$LOAD" tenants --count 16 --algs "$ALG" --out "$WORK/t" \
  --listen 127.0.0.1:14531 --admin 127.0.0.1:19531 --verify "threads = $THREADS" \
  --verify "cache = $CACHE" >/dev/null
ENDPOINTS=(--endpoint 127.0.0.1:14531 --endpoint 127.0.0.1:14532 --endpoint 127.0.0.1:14533)
declare -A PIDS

replica() { # start N
  local n=$1
  "$JOTD" serve --config "$WORK/t/jotd.toml" --listen "127.0.0.1:1453$n" \
    --admin "127.0.0.1:1953$n" --log-format json 2> "$WORK/serve$n.log" &
  PIDS[$n]=$!
  for _ in $(seq 100); do grep -q "jotd serving" "$WORK/serve$n.log" 2>/dev/null && return; sleep 0.05; done
  echo "replica $n did not start"; cat "$WORK/serve$n.log"; exit 1
}
stop_all() { for n in 1 2 3; do kill "${PIDS[$n]}" 2>/dev/null || true; wait "${PIDS[$n]}" 2>/dev/null || true; done; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
pool_ticks() { local t=0; for n in 1 2 3; do t=$((t + $(cpu_ticks "${PIDS[$n]}"))); done; echo $t; }

load() { # json-out extra-args...
  local out=$1; shift
  "$LOAD" run --manifest "$WORK/t/load.json" "${ENDPOINTS[@]}" --algs "$ALG" --batch 64 \
    --distinct 256 --quiet --json "$out" "$@"
}

verdict() { # label json exit-status
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
label, path, status = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    r = json.load(open(path))
except (OSError, ValueError):
    # The harness wrote no report (it failed before the end).
    print(f"| {label} | no report | | | | | | | | | | | FAIL (exit {status}) |")
    sys.exit(0)
f, l = r["fleet"], r["latency_us"]
# A failed run's percentiles leave its failed batches out: not shown, as
# they would understate the tail.
tail = (f"{l['p99']/1000:.1f} | {l['p999']/1000:.1f} | {l['max']/1000:.1f}" if status == "0"
        else "n/a | n/a | n/a")
print(f"| {label} | {r['tokens']} | {r['batch_errors']} | {r['missing']} | {r['mismatches']} | "
      f"{tail} | {f['retries']} | {f['hedges']} | "
      f"{f['late_duplicates']} | {f['ejections']} | {'pass' if status == '0' else 'FAIL'} |")
PY
}

for n in 1 2 3; do replica "$n"; done
if [ -z "${RATE:-}" ]; then
  load "$WORK/peak.json" --duration 5 >/dev/null
  RATE=$(python3 -c "import json; print(min(20000, int(json.load(open('$WORK/peak.json'))['tokens_per_s'] / 2)))")
  echo "pool peak $(field "$WORK/peak.json" tokens_per_s) tokens/s; running at $RATE tokens/s"
fi

echo "| run | tokens | failed batches | missing | wrong | p99 ms | p99.9 ms | max ms | retries | hedges | late dups | ejections | harness |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"

# 1. kill -9 and restart.
status=0
load "$WORK/kill.json" --rate "$RATE" --duration "$DURATION" >/dev/null &
H=$!
sleep "$KILL_AT"; kill -9 "${PIDS[1]}"; wait "${PIDS[1]}" 2>/dev/null || true
sleep $((RESTART_AT - KILL_AT)); replica 1
wait $H || status=$?
verdict "kill -9 of 1 of 3 at ${KILL_AT}s, back at ${RESTART_AT}s" "$WORK/kill.json" "$status"

# 2. rolling restart.
status=0
load "$WORK/roll.json" --rate "$RATE" --duration "$DURATION" >/dev/null &
H=$!
sleep 2
for n in 1 2 3; do
  kill -TERM "${PIDS[$n]}"; wait "${PIDS[$n]}" 2>/dev/null || true
  replica "$n"; sleep 2
done
wait $H || status=$?
verdict "rolling restart (SIGTERM, restart) of all 3" "$WORK/roll.json" "$status"

# 3. hedging cost at steady state.
: > "$WORK/cost"
for r in $(seq "$ROUNDS"); do
  order="on off"; [ $((r % 2)) = 0 ] && order="off on"
  for mode in $order; do
    flags=(); [ "$mode" = off ] && flags=(--no-hedge)
    before=$(pool_ticks)
    status=0
    # No earlier round's report can stand in for this one's.
    rm -f "$WORK/cost.json"
    load "$WORK/cost.json" --rate "$RATE" --duration 8 "${flags[@]}" >/dev/null || status=$?
    after=$(pool_ticks)
    verdict "steady, hedging $mode (round $r)" "$WORK/cost.json" "$status"
    # A failed round is not averaged into the cost.
    if [ "$status" = 0 ] && [ -s "$WORK/cost.json" ]; then
      tokens=$(field "$WORK/cost.json" tokens)
      cost=$(per_token $((after - before)) "$tokens" 1e6)
      echo "$mode $cost $(python3 -c "import json; print(json.load(open('$WORK/cost.json'))['fleet']['hedges'])") $(field "$WORK/cost.json" batches)" >> "$WORK/cost"
    fi
  done
done
stop_all
awk '
  $1 == "on" { on += $2; h += $3; b += $4; n_on++ }
  $1 == "off" { off += $2; n_off++ }
  END {
    if (!n_on || !n_off || !b || !off) { print "\nHedging cost: no passing round of both modes"; exit 0 }
    printf "\nHedging cost: pool CPU %.2f us/token on, %.2f off (on/off %.3f); hedges %d of %d batches (%.2f %%).\n",
        on / n_on, off / n_off, (on / n_on) / (off / n_off), h, b, 100 * h / b }' "$WORK/cost"
echo "Command: $(printf '%q ' env ALG="$ALG" CACHE="$CACHE" RATE="$RATE" DURATION="$DURATION" KILL_AT="$KILL_AT" RESTART_AT="$RESTART_AT" ROUNDS="$ROUNDS" THREADS="$THREADS" benches/failover.sh)"

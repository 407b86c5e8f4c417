#!/usr/bin/env bash
# What metrics cost: the daemon's CPU per token with metrics on and off, at
# the same fixed (open-loop) load, in alternating rounds.
#
# Peak throughput on a small shared machine swings by ±10 % from run to run,
# which hides a 2 % effect. CPU time per token at a fixed offered load does not
# depend on how the scheduler happens to share the cores: every round serves
# the same tokens, and the daemon's utime + stime (from /proc/PID/stat, taken
# right before and after the harness runs) says what they cost.
#
# Workload: cached HS256, batches of 64: the cheapest tokens, so the largest
# share for anything done per batch (metrics are recorded once per batch).
#
#   benches/metrics-cost.sh                # build, 8 rounds at 600k tokens/s
#   NO_BUILD=1 ROUNDS=4 RATE=300000 benches/metrics-cost.sh
#   RATE=max benches/metrics-cost.sh       # closed loop: also compares peak tokens/s
#
# Env: BIN (folder with jotd and jotd-load; default target/release), NO_BUILD,
# ROUNDS (default 8), RATE (tokens/s, default 600000), DURATION (s, default 8),
# BATCH (default 64), ALG (default HS256).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release}
ROUNDS=${ROUNDS:-8}
RATE=${RATE:-600000}
DURATION=${DURATION:-8}
BATCH=${BATCH:-64}
ALG=${ALG:-HS256}
# shellcheck source=benches/common.sh
source benches/common.sh
TICKS=$(getconf CLK_TCK)

"$LOAD" tenants --count 16 --algs "$ALG" --out "$WORK/t" \
  --listen 127.0.0.1:14511 --admin 127.0.0.1:19511 >/dev/null

cpu_ticks() { # utime + stime of a process, in clock ticks
  sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

round() { # mode (on|off)
  local flags=(); [ "$1" = off ] && flags=(--no-metrics)
  start_daemon "$WORK/t/jotd.toml" "$WORK/serve.log" "${flags[@]}"
  local pid=$DAEMON
  local before after
  before=$(cpu_ticks "$pid")
  local pace=(--rate "$RATE"); [ "$RATE" = max ] && pace=(--max)
  "$LOAD" run --manifest "$WORK/t/load.json" --duration "$DURATION" --quiet --algs "$ALG" \
    --batch "$BATCH" --distinct 16 "${pace[@]}" --json "$WORK/r.json" >/dev/null
  after=$(cpu_ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local tokens mism
  tokens=$(field "$WORK/r.json" tokens)
  mism=$(field "$WORK/r.json" mismatches)
  [ "$mism" = 0 ] || { echo "mismatches in round $1: $mism"; exit 1; }
  # CPU µs per 1,000 tokens, tokens, tokens/s.
  local cost
  cost=$(per_token $((after - before)) "$tokens" 1e9)
  echo "$1 $cost $tokens $(field "$WORK/r.json" tokens_per_s)"
}

echo "| round | metrics on: daemon CPU µs / 1k tokens | metrics off | on: tokens/s | off: tokens/s |"
echo "| --- | --- | --- | --- | --- |"
: > "$WORK/all"
for r in $(seq "$ROUNDS"); do
  # Swap the order every round, so drift in the machine hits both modes alike.
  if [ $((r % 2)) = 1 ]; then a=on; b=off; else a=off; b=on; fi
  round $a >> "$WORK/all"
  round $b >> "$WORK/all"
  on=$(grep '^on ' "$WORK/all" | tail -1)
  off=$(grep '^off ' "$WORK/all" | tail -1)
  printf '| %s | %.1f | %.1f | %.0f | %.0f |\n' "$r" "$(echo "$on" | awk '{print $2}')" \
    "$(echo "$off" | awk '{print $2}')" "$(echo "$on" | awk '{print $4}')" "$(echo "$off" | awk '{print $4}')"
done
awk '
  $1 == "on" { on += $2; tps_on += $4; n_on++ }
  $1 == "off" { off += $2; tps_off += $4; n_off++ }
  END {
    m_on = on / n_on; m_off = off / n_off
    printf "\nMeans: on %.1f, off %.1f µs of daemon CPU per 1,000 tokens: metrics add %+.1f %%.\n", m_on, m_off, (m_on / m_off - 1) * 100
    printf "Tokens/s: on %.0f, off %.0f (on/off %.3f).\n", tps_on / n_on, tps_off / n_off, tps_on / tps_off
  }' "$WORK/all"
echo "Command: $(printf '%q ' env ROUNDS="$ROUNDS" RATE="$RATE" DURATION="$DURATION" BATCH="$BATCH" ALG="$ALG" benches/metrics-cost.sh)"

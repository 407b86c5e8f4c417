#!/usr/bin/env bash
# A/B of two builds of jotd end to end, in alternating rounds on the same
# machine (the order swaps every round, so drift hits both alike):
#
# 1. cost: daemon CPU per token (utime + stime from /proc, read right before
#    and after the harness runs) for cached HS256 × 64 at a fixed open-loop
#    rate (default 300k tokens/s);
# 2. peak: RS256 × 64 with the cache off, closed loop, tokens/s and its ratio
#    to the raw one-core aws-lc-rs rate measured in the same run;
# 3. latency: RS256 × 64 with the cache off, open loop at half of the B
#    build's peak, p50/p99/p99.9 against the batch's compute time on the
#    verification threads (64 / (raw rate × threads)).
#
# Every run must pass (jotd-load exits 0: zero mismatches, every decision
# there, no batch errors), else the script stops with status 1.
#
#   BIN_A=/tmp/bin-old BIN_B=target/release benches/ab.sh
#
# Env: BIN_A, BIN_B (folders with jotd and jotd-load; both sides are driven
# by B's jotd-load, so the daemons are what differ; B defaults to
# target/release), ROUNDS (default 3), RATE (default 300000), DURATION
# (seconds per run, default 6), LOAD_THREADS (default 2), ONLY=cost (the
# CPU-per-token rounds alone).
set -euo pipefail
# `set -e` inside `$(run ...)` too: a failed run stops the script rather
# than handing on a stale or empty figure.
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

BIN_A=${BIN_A:?set BIN_A to the baseline build}
BIN_B=${BIN_B:-target/release}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-300000}
DURATION=${DURATION:-6}
LOAD_THREADS=${LOAD_THREADS:-2}
NO_BUILD=1
BIN=$BIN_B
# shellcheck source=benches/common.sh
source benches/common.sh
TICKS=$(getconf CLK_TCK)
CORES=$(nproc)

"$BIN_B/jotd" speed --seconds 3 --algs RS256 --json > "$WORK/speed.json"
RAW=$(grep -o '"raw_per_s":[0-9.e+]*' "$WORK/speed.json" | head -1 | cut -d: -f2)

"$BIN_B/jotd-load" tenants --count 16 --algs HS256 --out "$WORK/hs" \
  --listen 127.0.0.1:14521 --admin 127.0.0.1:19521 >/dev/null
"$BIN_B/jotd-load" tenants --count 16 --algs RS256 --out "$WORK/rs" \
  --listen 127.0.0.1:14522 --admin 127.0.0.1:19522 --verify "cache = false" >/dev/null

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# run BUILD DIR ALG DISTINCT [pace...] -> "cpu_us_per_token tokens_per_s p50 p99 p999"
run() {
  local bin=$1 dir=$2 alg=$3 distinct=$4; shift 4
  JOTD="$bin/jotd" start_daemon "$dir/jotd.toml" "$WORK/serve.log"
  local pid=$DAEMON before after
  before=$(cpu_ticks "$pid")
  # No figure from an earlier run can stand in for this one's.
  rm -f "$WORK/r.json"
  local rc=0
  # B's harness for both sides: the daemons are compared, not two
  # harnesses (whose latency accounting may differ between builds).
  "$BIN_B/jotd-load" run --manifest "$dir/load.json" --duration "$DURATION" --quiet --algs "$alg" \
    --batch 64 --distinct "$distinct" --threads "$LOAD_THREADS" --json "$WORK/r.json" "$@" >/dev/null || rc=$?
  after=$(cpu_ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # jotd-load exits non-zero on any mismatch, missing decision, batch error
  # or protocol violation (its report says which).
  if [ "$rc" != 0 ] || [ ! -s "$WORK/r.json" ]; then
    echo "jotd-load failed ($bin $alg $*): status $rc" >&2
    exit 1
  fi
  local mism tokens
  mism=$(field "$WORK/r.json" mismatches); tokens=$(field "$WORK/r.json" tokens)
  [ "$mism" = 0 ] || { echo "mismatches ($bin $alg): $mism" >&2; exit 1; }
  local cost
  cost=$(per_token $((after - before)) "$tokens" 1e6)
  echo "$cost $(field "$WORK/r.json" tokens_per_s) $(field "$WORK/r.json" p50) $(field "$WORK/r.json" p99) $(field "$WORK/r.json" p999)"
}

: > "$WORK/all"
for r in $(seq "$ROUNDS"); do
  order="A B"; [ $((r % 2)) = 0 ] && order="B A"
  for side in $order; do
    bin=$BIN_A; [ "$side" = B ] && bin=$BIN_B
    line=$(run "$bin" "$WORK/hs" HS256 16 --rate "$RATE")
    echo "cost $side $line" >> "$WORK/all"
    [ "${ONLY:-}" = cost ] && continue
    line=$(run "$bin" "$WORK/rs" RS256 256)
    echo "peak $side $line" >> "$WORK/all"
  done
  if [ "${ONLY:-}" = cost ]; then tail -2 "$WORK/all"; continue; fi
  half=$(grep "^peak B" "$WORK/all" | tail -1 | awk '{printf "%d", $4 / 2}')
  [ "$half" -gt 0 ] || { echo "peak B gave no rate" >&2; exit 1; }
  for side in $order; do
    bin=$BIN_A; [ "$side" = B ] && bin=$BIN_B
    line=$(run "$bin" "$WORK/rs" RS256 256 --rate "$half")
    echo "lat $side $line $half" >> "$WORK/all"
  done
  tail -6 "$WORK/all"
done

threads=$CORES
awk -v raw="$RAW" -v threads="$threads" -v rate="$RATE" '
  { k = $1 " " $2; n[k]++; cpu[k] += $3; tps[k] += $4; p50[k] += $5; p99[k] += $6; p999[k] += $7; if ($1 == "lat") half[k] += $8 }
  END {
    compute = 64 / (raw * threads) * 1e6
    printf "\nRaw RS256 one core: %.0f/s; RS256 x 64 on %d verification threads: %.0f us.\n\n", raw, threads, compute
    print "| measure | A (baseline) | B | B / A |"
    print "| --- | --- | --- | --- |"
    a = cpu["cost A"] / n["cost A"]; b = cpu["cost B"] / n["cost B"]
    printf "| daemon CPU us/token, cached HS256 x 64 at %d/s | %.2f | %.2f | %.2f |\n", rate, a, b, b / a
    if (!n["peak A"]) exit
    a = tps["peak A"] / n["peak A"]; b = tps["peak B"] / n["peak B"]
    printf "| RS256 x 64 uncached, tokens/s | %.0f | %.0f | %.2f |\n", a, b, b / a
    printf "| same, / raw one-core rate | %.2f | %.2f | |\n", a / raw, b / raw
    for (p = 1; p <= 3; p++) {
      name = (p == 1) ? "p50" : (p == 2) ? "p99" : "p99.9"
      a = (p == 1 ? p50["lat A"] : p == 2 ? p99["lat A"] : p999["lat A"]) / n["lat A"]
      b = (p == 1 ? p50["lat B"] : p == 2 ? p99["lat B"] : p999["lat B"]) / n["lat B"]
      printf "| RS256 x 64 at half of B peak (%.0f/s), %s us | %.0f | %.0f | %.2f |\n", half["lat B"] / n["lat B"], name, a, b, b / a
    }
    printf "\nLatency target: p99 <= 2 x %.0f = %.0f us.\n", compute, 2 * compute
  }' "$WORK/all"
echo "Command: $(printf '%q ' env BIN_A="$BIN_A" BIN_B="$BIN_B" ROUNDS="$ROUNDS" RATE="$RATE" DURATION="$DURATION" LOAD_THREADS="$LOAD_THREADS" benches/ab.sh)"

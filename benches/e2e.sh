#!/usr/bin/env bash
# End-to-end benchmark: jotd serve driven by jotd-load over loopback QUIC.
#
# Matrix: algorithms × batch sizes 1/16/64/256 × token reuse none/high, plus
# RS256 batches of 64 at half of peak (open loop) for the latency target.
# Reuse "none": the daemon runs with its verified-token cache off, so every
# token is verified (a realistic all-miss load without minting millions of
# RSA tokens). Reuse "high": cache on, 16 distinct tokens per tenant and key.
# The raw aws-lc-rs one-core rate of each algorithm is measured in the same
# run (`jotd speed`), and every row gives tokens/s as a ratio to it.
#
# Writes a markdown section into OUT between markers for LABEL (replacing an
# earlier one), so runs on several machines sit side by side.
#
#   benches/e2e.sh                      # build, run, update docs/benchmarks.md
#   NO_BUILD=1 BIN=/opt/jotd LABEL=16-core THREADS=12 benches/e2e.sh
#
# Env: BIN (folder with jotd and jotd-load; default target/release), NO_BUILD,
# DURATION (seconds per cell, default 5), THREADS (verification threads,
# default: all cores), LOAD_THREADS (harness threads, default 2), ALGS
# (default RS256,ES256,EdDSA,HS256), BATCHES (default "1 16 64 256"),
# LABEL (default: cores of this machine), OUT (default docs/benchmarks.md),
# LOAD_ARGS (more `jotd-load run` flags for every cell, e.g. "--connections 8").
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release}
DURATION=${DURATION:-5}
ALGS=${ALGS:-RS256,ES256,EdDSA,HS256}
BATCHES=${BATCHES:-"1 16 64 256"}
CORES=$(nproc)
THREADS=${THREADS:-0}
LOAD_THREADS=${LOAD_THREADS:-2}
LABEL=${LABEL:-"${CORES}-core"}
OUT=${OUT:-docs/benchmarks.md}
LOAD_ARGS=${LOAD_ARGS:-}
# shellcheck source=benches/common.sh
source benches/common.sh

echo "== raw aws-lc-rs, one core (jotd speed)"
"$JOTD" speed --seconds 3 --algs "$ALGS" --json > "$WORK/speed.json"
raw() { grep "\"alg\":\"$1\"" "$WORK/speed.json" | grep -o '"raw_per_s":[0-9.e+]*' | cut -d: -f2; }

echo "== workloads"
"$LOAD" tenants --count 16 --algs "$ALGS" --out "$WORK/nocache" \
  --listen 127.0.0.1:14501 --admin 127.0.0.1:19501 --verify "cache = false" --verify "threads = $THREADS" >/dev/null
"$LOAD" tenants --count 16 --algs "$ALGS" --out "$WORK/cache" \
  --listen 127.0.0.1:14502 --admin 127.0.0.1:19502 --verify "threads = $THREADS" >/dev/null

# calc EXPR: awk arithmetic (no bc on a bare machine).
calc() { awk "BEGIN { print $1 }"; }

ROWS="$WORK/rows.md"
: > "$ROWS"
cell() { # reuse dir alg batch extra...
  local reuse=$1 dir=$2 alg=$3 batch=$4; shift 4
  local distinct=16; [ "$reuse" = none ] && distinct=256
  local json="$WORK/r.json"
  # A failing cell prints its own report, never the cell before's.
  rm -f "$json"
  "$LOAD" run --manifest "$dir/load.json" --duration "$DURATION" --quiet --algs "$alg" \
    --batch "$batch" --distinct "$distinct" --threads "$LOAD_THREADS" --json "$json" $LOAD_ARGS "$@" >/dev/null || {
      echo "jotd-load failed for $alg batch $batch ($reuse)"; cat "$json" 2>/dev/null; exit 1; }
  local tps r
  tps=$(field "$json" tokens_per_s); r=$(raw "$alg")
  printf '| %s | %s | %s | %s | %.0f | %.0f | %.2f | %s | %s | %s | %s |\n' \
    "$alg" "$batch" "$reuse" "${MODE:-max}" "$tps" "$r" "$(calc "$tps / $r")" \
    "$(field "$json" p50)" "$(field "$json" p99)" "$(field "$json" p999)" "$(field "$json" mismatches)" >> "$ROWS"
  tail -1 "$ROWS"
  LAST_TPS=$tps
}

echo "== matrix"
for reuse in none high; do
  dir="$WORK/nocache"; [ "$reuse" = high ] && dir="$WORK/cache"
  start_daemon "$dir/jotd.toml" "$dir/serve.log"
  for alg in ${ALGS//,/ }; do
    for b in $BATCHES; do
      cell "$reuse" "$dir" "$alg" "$b"
    done
  done
  if [ "$reuse" = none ] && [[ ",$ALGS," == *,RS256,* ]]; then
    # Latency target: RS256 × 64 at half of its peak, open loop (when RS256
    # is among the algorithms run: its keys are in the manifest then).
    MODE=max cell none "$dir" RS256 64
    half=$(calc "int($LAST_TPS / 2)")
    MODE="open ${half}/s" cell none "$dir" RS256 64 --rate "$half"
  fi
  kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
done

verify_threads=$THREADS; [ "$verify_threads" = 0 ] && verify_threads=$CORES
latency_line() {
  [[ ",$ALGS," == *,RS256,* ]] || { echo "(RS256 not among ALGS: no latency rows.)"; return; }
  local rs_raw on_cores
  rs_raw=$(raw RS256)
  on_cores=$(calc "64 / ($rs_raw * $verify_threads) * 1000000")
  printf 'RS256 × 64 on the verification cores alone: 64 / (%.0f/s × %s) = %.0f µs; the latency target is p99 ≤ 2 × that = %.0f µs.\n' \
    "$rs_raw" "$verify_threads" "$on_cores" "$(calc "2 * $on_cores")"
}
SECTION="$WORK/section.md"
{
  echo "<!-- e2e:$LABEL:begin -->"
  echo "### $LABEL: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $CORES cores, $(date -u +%F)"
  echo
  echo "Daemon with $verify_threads verification threads, harness with $LOAD_THREADS threads${LOAD_ARGS:+ (\`$LOAD_ARGS\`)}, same machine."
  echo "Raw = aws-lc-rs on one core, measured in this run (\`jotd speed\`). Latency per batch, µs."
  echo "Command: \`$(printf '%q ' env LABEL="$LABEL" THREADS="$THREADS" LOAD_THREADS="$LOAD_THREADS" DURATION="$DURATION" ALGS="$ALGS" BATCHES="$BATCHES" ${LOAD_ARGS:+LOAD_ARGS="$LOAD_ARGS"} benches/e2e.sh)\`"
  echo
  echo "| alg | batch | reuse | mode | tokens/s | raw 1-core/s | ratio | p50 | p99 | p99.9 | mismatches |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  cat "$ROWS"
  echo
  latency_line
  echo "<!-- e2e:$LABEL:end -->"
} > "$SECTION"

if grep -q "<!-- e2e:$LABEL:begin -->" "$OUT" 2>/dev/null; then
  awk -v label="$LABEL" -v section="$SECTION" '
    $0 == "<!-- e2e:" label ":begin -->" { while ((getline line < section) > 0) print line; skip = 1; next }
    $0 == "<!-- e2e:" label ":end -->" { skip = 0; next }
    !skip { print }' "$OUT" > "$WORK/out.md"
  cp "$WORK/out.md" "$OUT"
else
  { echo; cat "$SECTION"; } >> "$OUT"
fi
echo "== wrote the $LABEL section of $OUT"

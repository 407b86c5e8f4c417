#!/usr/bin/env bash
# The many-core figures of issues 2, 12, 13 and 15 in one run, from release
# binaries built elsewhere (a lent machine has no registry and no compiler
# time to spare). Every part writes its results as it goes, so a run cut short
# still returns what it measured.
#
#   BIN=/path/with/jotd,jotd-load,jotd-gateway RESULTS=/tmp/r benches/many-cores.sh
#   QUICK=1 ...   # the same steps, small and short: to check the script itself
#
# 1. Cache and engine scaling (`jotd speed`): HS256 at 256, 65,536 and 1M
#    distinct tokens on 1, 8 and 16 threads (rates per thread), RS256 at 256
#    tokens on 1 and 16 threads, and the hot-set-plus-scan line on 16 threads.
# 2. The daemon end to end (benches/e2e.sh): 12 verification threads, the
#    harness on 4, RS256 and HS256 × 64, with the harness's default
#    connections and with 8.
# 3. ext_authz RS256 against QUIC RS256 × 64 (benches/gateway.sh ONLY=extauthz),
#    if h2load runs (H2LOAD=path; LD_LIBRARY_PATH for its libraries).
#
# Env: BIN, RESULTS (both required), QUICK, PARTS (default "speed e2e extauthz").
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:?folder with jotd, jotd-load and jotd-gateway}
R=${RESULTS:?folder for the results}
PARTS=${PARTS:-speed e2e extauthz}
mkdir -p "$R"
log() { echo "[$(date -u +%T)] $*" | tee -a "$R/progress.log"; }

{
  echo "cores: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo
  uname -a
  free -g
} > "$R/machine.txt" 2>&1

if [ -n "${QUICK:-}" ]; then
  SECS=1 THREAD_SET="1 2" TOKEN_SET="256 4096" HOT_TOKENS=20000 E2E_SECS=2 E2E_THREADS=1 LOAD_THREADS=1 N=2000 H2T=1 H2C=4
else
  SECS=2 THREAD_SET="1 8 16" TOKEN_SET="256 65536 1000000" HOT_TOKENS=900000 E2E_SECS=5 E2E_THREADS=12 LOAD_THREADS=4 N=400000 H2T=4 H2C=64
fi
top=${THREAD_SET##* }
# gateway.sh reads the daemon's metrics with curl; a bare machine may lack it.
if ! command -v curl > /dev/null; then
  curl() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[-1]).read().decode())' "$@"; }
  export -f curl
fi

for part in $PARTS; do
  case $part in
  speed)
    log "speed: HS256 scaling"
    for n in $TOKEN_SET; do
      for t in $THREAD_SET; do
        timeout 300 "$BIN/jotd" speed --algs HS256 --tokens "$n" --threads "$t" --seconds "$SECS" --json >> "$R/speed.jsonl" \
          || log "jotd speed HS256 tokens=$n threads=$t failed"
      done
    done
    log "speed: RS256 at 256 tokens"
    for t in 1 "$top"; do
      timeout 120 "$BIN/jotd" speed --algs RS256 --tokens 256 --threads "$t" --seconds "$SECS" --json >> "$R/speed.jsonl" \
        || log "jotd speed RS256 threads=$t failed"
    done
    log "speed: hot set plus scan on $top threads"
    timeout 300 "$BIN/jotd" speed --algs HS256 --tokens "$HOT_TOKENS" --hot 1000 --scan-per-hot 1 --threads "$top" --seconds "$SECS" --json >> "$R/speed.jsonl" \
      || log "jotd speed hot set failed"
    ;;
  e2e)
    for conns in 2 8; do
      log "e2e: $E2E_THREADS verification threads, harness $LOAD_THREADS threads, $conns connections"
      env OUT="$R/e2e.md" NO_BUILD=1 BIN="$BIN" LABEL="$(nproc)-core-${conns}conn" THREADS="$E2E_THREADS" \
        LOAD_THREADS="$LOAD_THREADS" ALGS=RS256,HS256 BATCHES=64 DURATION="$E2E_SECS" LOAD_ARGS="--connections $conns" \
        timeout 300 benches/e2e.sh > "$R/e2e-${conns}conn.log" 2>&1 || log "e2e with $conns connections failed (see its log)"
    done
    ;;
  extauthz)
    if ! "${H2LOAD:-h2load}" --version > /dev/null 2>&1; then
      log "extauthz: no working h2load (H2LOAD=${H2LOAD:-h2load}); skipped"
      continue
    fi
    log "extauthz: RS256 uncached, h2load $H2T threads × $H2C connections, $N checks per round"
    env BIN="$BIN" ONLY=extauthz N="$N" H2_THREADS="$H2T" H2_CONNS="$H2C" ROUNDS=2 \
      timeout 300 benches/gateway.sh > "$R/extauthz.log" 2>&1 || log "extauthz failed (see its log)"
    ;;
  *) log "unknown part $part" ;;
  esac
done
log "done"

#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: builds once, then runs each target
# under `nice -n 19` for SECONDS_PER_TARGET (default 60), PARALLEL at a time
# (default 1), and prints per target: runs executed, corpus files at the end
# and crashes found. Exits 1 if any target crashed (or timed out, or ran out of
# memory); the input is kept under fuzz/artifacts/<target>/.
#
#   fuzz/run-all.sh [SECONDS_PER_TARGET] [PARALLEL]
#
# Environment: TARGETS="a b" runs only those; FUZZ_LOG_DIR (default
# fuzz/target/run-all) keeps each target's libFuzzer log; FUZZ_CARGO overrides
# the cargo command (default `cargo +nightly` if a nightly toolchain is
# installed, else `RUSTC_BOOTSTRAP=1 cargo`).
set -euo pipefail

seconds=${1:-60}
parallel=${2:-1}
cd "$(dirname "$0")"

if [[ -n ${FUZZ_CARGO:-} ]]; then
    read -ra cargo <<<"$FUZZ_CARGO"
elif rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo=(cargo +nightly)
else
    cargo=(env RUSTC_BOOTSTRAP=1 cargo)
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=target/$triple/release
log_dir=${FUZZ_LOG_DIR:-target/run-all}
read -ra targets <<<"${TARGETS:-$("${cargo[@]}" fuzz list | tr '\n' ' ')}"

echo "building ${#targets[@]} targets with ${cargo[*]} fuzz build" >&2
nice -n 19 "${cargo[@]}" fuzz build >&2
mkdir -p "$log_dir"

run_one() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    local before
    before=$(find "artifacts/$t" -type f | wc -l)
    local rc=0
    ASAN_OPTIONS=detect_odr_violation=0 nice -n 19 "$bin_dir/$t" \
        -artifact_prefix="artifacts/$t/" -max_total_time="$seconds" -timeout=30 \
        -print_final_stats=1 "corpus/$t" >"$log_dir/$t.log" 2>&1 || rc=$?
    local runs corpus crashes
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_dir/$t.log" | tail -1)
    [[ -n $runs ]] || runs=$(grep -o "^#[0-9]*" "$log_dir/$t.log" | tail -1 | tr -d "#" || true)
    corpus=$(find "corpus/$t" -type f | wc -l)
    crashes=$(($(find "artifacts/$t" -type f | wc -l) - before))
    if ((rc != 0 && crashes == 0)); then crashes=1; fi
    printf '%s %s %s %s %s %s\n' "$t" "$seconds" "${runs:-?}" "$corpus" "$crashes" "$rc" \
        >"$log_dir/$t.result"
}

start=$(date -u +%Y-%m-%dT%H:%MZ)
rm -f "$log_dir"/*.result
running=0
for t in "${targets[@]}"; do
    if ((running >= parallel)); then
        wait -n || true
        running=$((running - 1))
    fi
    echo "$(date -u +%H:%M:%S) start $t (${seconds}s)" >&2
    run_one "$t" &
    running=$((running + 1))
done
wait

echo "started $start; $seconds s per target, $parallel at a time; logs in fuzz/$log_dir/"
printf '%-14s %8s %12s %13s %8s\n' target seconds runs corpus_files crashes
failed=0
for t in "${targets[@]}"; do
    read -r name secs runs corpus crashes rc <"$log_dir/$t.result"
    printf '%-14s %8s %12s %13s %8s\n' "$name" "$secs" "$runs" "$corpus" "$crashes"
    if ((crashes > 0)); then
        failed=1
        echo "  $t exited $rc; input: $(ls -t "artifacts/$t" | head -1 | sed "s|^|fuzz/artifacts/$t/|")" \
            "; minimise: cd fuzz && ${cargo[*]} fuzz tmin $t <input>" \
            "; panic: $(grep -m1 -E "panicked at|ERROR: " "$log_dir/$t.log" || true)"
    fi
done
exit "$failed"

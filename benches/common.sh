# Shared by the benchmark scripts (sourced, not run): a scratch folder removed
# on exit with every background job, the binaries (built unless NO_BUILD is
# set), and helpers.

WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -p jotd -p jotd-load
fi
JOTD="$BIN/jotd"
LOAD="$BIN/jotd-load"

# field FILE NAME: the first numeric value of "NAME" in a jotd-load --json report.
field() { grep -o "\"$2\": [-0-9.e+]*" "$1" | head -1 | awk '{print $2}'; }

# per_token TICKS_DELTA TOKENS SCALE: CPU per token (SCALE 1e6: µs; 1e9:
# µs per 1k tokens), in awk (no bc on a bare machine: a missing bc printed
# nothing, and every later figure on the line moved one column left). Fails
# the script on no tokens or a figure that is not a number.
per_token() {
  local out
  out=$(awk -v d="$1" -v n="$2" -v s="$3" -v t="$TICKS" 'BEGIN {
    if (n !~ /^[0-9]+$/ || n + 0 <= 0 || d !~ /^-?[0-9]+$/) exit 1
    printf "%.4f", d / t * s / n }') || { echo "per_token: no figure (ticks $1, tokens ${2:-none})" >&2; exit 1; }
  echo "$out"
}

# start_daemon CONFIG LOG [serve flags...]: starts jotd serve, waits until it
# serves, sets DAEMON to its pid.
start_daemon() {
  local config=$1 log=$2; shift 2
  "$JOTD" serve --config "$config" --log-format json "$@" 2> "$log" &
  DAEMON=$!
  for _ in $(seq 50); do grep -q "jotd serving" "$log" 2>/dev/null && return; sleep 0.1; done
  # Stopped here too: from a command substitution (`$(run …)`) the EXIT
  # trap above is not this shell's, and a slow starter stayed on its ports.
  kill "$DAEMON" 2>/dev/null || true
  { echo "daemon did not start:"; cat "$log"; } >&2; exit 1
}

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

# start_daemon CONFIG LOG [serve flags...]: starts jotd serve, waits until it
# serves, sets DAEMON to its pid.
start_daemon() {
  local config=$1 log=$2; shift 2
  "$JOTD" serve --config "$config" --log-format json "$@" 2> "$log" &
  DAEMON=$!
  for _ in $(seq 50); do grep -q "jotd serving" "$log" 2>/dev/null && return; sleep 0.1; done
  echo "daemon did not start:"; cat "$log"; exit 1
}

#!/usr/bin/env bash
# jotd-gateway benchmarks (docs/gateways.md, docs/benchmarks.md), with oha as
# the load tool (cargo install oha; OHA=/path/to/oha):
#
#   1. Micro-batching: at a fixed rate of cached-token checks through the
#      forward-auth door, gateway + daemon CPU per check with the default
#      batching against batches of one ([batch] max_items = 1), alternated
#      A/B/A/B in one run.
#   2. Added latency: JSON-RPC calls at a fixed rate through the proxy door
#      against the same calls straight to the node (ganache), alternated.
#
# Needs release builds (cargo build --release -p jotd -p jotd-gateway -p jotd-load)
# and ganache (tests/tools/install-gateway-peers.sh). Everything binds 127.0.0.1.
#
#   RATE=20000 SECS=15 LAT_RATE=1000 LAT_SECS=20 benches/gateway.sh
#   GW_THREADS=1 ONLY=batching benches/gateway.sh     # one tokio worker; part 1 only
#   ONLY=extauthz benches/gateway.sh                   # 3. ext_authz RS256 vs QUIC (h2load: nghttp2-client)
#   ONLY=extauthz N=200000 H2_THREADS=4 H2_CONNS=64 benches/gateway.sh   # the same on a bigger machine
# Part 3 needs neither ganache nor the development daemon.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/target/release}"
OHA="${OHA:-oha}"
RATE="${RATE:-20000}"
SECS="${SECS:-15}"
CONNS="${CONNS:-64}"
LAT_RATE="${LAT_RATE:-1000}"
LAT_SECS="${LAT_SECS:-20}"
ROUNDS="${ROUNDS:-2}"
GANACHE="$ROOT/tests/.tools/node_modules/ganache/dist/node/cli.js"
WORK="$(mktemp -d /tmp/jotd-gw-bench.XXXXXX)"
cd "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
# utime + stime, in clock ticks: read past the command name (which may hold
# blanks), so state is the first field and utime the 12th.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# Microseconds per clock tick (not always 100 ticks a second).
US_PER_TICK=$(awk -v t="$(getconf CLK_TCK)" 'BEGIN { printf "%.6f", 1e6 / t }')

if [ "${ONLY:-}" = extauthz ]; then
  # 3. RS256 uncached: the Envoy ext_authz door (h2load, from Debian's
  # nghttp2-client, sending one gRPC Check) against jotd-load's QUIC
  # RS256 x 64, on one daemon with the cache off, alternated. The same request
  # each time: with the cache off every check verifies the signature.
  H2LOAD="${H2LOAD:-h2load}"
  N="${N:-60000}"
  H2_THREADS="${H2_THREADS:-1}"
  H2_CONNS="${H2_CONNS:-16}"
  "$BIN/jotd-load" tenants --count 1 --algs RS256 --out "$WORK/t" --listen 127.0.0.1:14600 \
    --admin 127.0.0.1:19600 --verify "cache = false" > /dev/null
  "$BIN/jotd" serve --config "$WORK/t/jotd.toml" > jotd-nocache.log 2>&1 &
  pids+=("$!")
  wait_port 19600
  printf '[pool]\nendpoints = ["127.0.0.1:14600"]\nca_file = "%s"\n[ext_authz]\nlisten = "127.0.0.1:18602"\n[admin]\nlisten = "127.0.0.1:19467"\n[[route]]\ntenant = "tenant-000000"\n' \
    "$WORK/t/ca.pem" > gw-ext.toml
  env ${GW_THREADS:+TOKIO_WORKER_THREADS=$GW_THREADS} RUST_LOG=warn "$BIN/jotd-gateway" serve --config gw-ext.toml > gw-ext.log 2>&1 &
  pids+=("$!")
  wait_port 19467
  RS=$("$BIN/jotd-load" mint --key "$WORK/t/keys/rs256.pk8.der" --alg RS256 --kid rs256 --claims '{"aud":"jotd-load"}')
  python3 "$ROOT/benches/grpc_check.py" "$RS" > check.bin
  ok_count() { curl -s http://127.0.0.1:19600/metrics | awk '/^jotd_tokens_total/ && /reason="ok"/ {s+=$2} END {printf "%d", s}'; }
  for round in $(seq 1 "$ROUNDS"); do
    # The run's own rate from its report (the first progress line is the
    # first second's, warm-up included).
    rm -f "quic-$round.json"
    "$BIN/jotd-load" run --manifest "$WORK/t/load.json" --algs RS256 --batch 64 --duration 10 --quiet \
      --json "quic-$round.json" > "quic-$round.log" 2>&1
    quic=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.0f tokens/s" % r["tokens_per_s"])' "quic-$round.json")
    echo "QUIC RS256 x 64 (jotd-load) round $round: $quic"
    b=$(ok_count)
    out=$("$H2LOAD" -n "$N" -c "$H2_CONNS" -m 32 -t "$H2_THREADS" -d check.bin -H 'content-type: application/grpc' -H 'te: trailers' \
      http://127.0.0.1:18602/envoy.service.auth.v3.Authorization/Check 2>&1)
    a=$(ok_count)
    echo "ext_authz RS256 (h2load) round $round: $(echo "$out" | grep -E '^finished in'); $(echo "$out" | grep -E '^requests:'); jotd ok decisions +$((a - b))"
  done
  echo "results in $WORK"
  exit 0
fi
"$BIN/jotd" serve > jotd.log 2>&1 &
JOTD=$!; pids+=("$JOTD")
wait_port 9464
node "$GANACHE" --server.host 127.0.0.1 --server.port 18545 --wallet.deterministic --logging.quiet > /dev/null 2>&1 &
pids+=("$!")
wait_port 18545

ACCOUNT=0x90F8bf6A479f320ead074411a4B0e7944Ea8c9C1
TOKEN=$("$BIN/jotd-load" mint --key jotd-dev/keys/es256.pk8.der --alg ES256 --kid es256 --claims '{"aud":"jotd-dev"}')

gateway() { # $1: max_items
  cat > gw.toml <<EOF
[pool]
endpoints = ["127.0.0.1:4433"]
ca_file = "jotd-dev/ca.pem"
[batch]
max_items = $1
[proxy]
listen = "127.0.0.1:18600"
upstreams = ["http://127.0.0.1:18545/"]
[forward_auth]
listen = "127.0.0.1:18601"
[admin]
listen = "127.0.0.1:19466"
[[route]]
path = "/v3/{tenant}"
EOF
  # GW_THREADS: the gateway's tokio worker threads (default: one per core).
  env ${GW_THREADS:+TOKIO_WORKER_THREADS=$GW_THREADS} RUST_LOG=warn "$BIN/jotd-gateway" serve --config gw.toml > "gw-$1.log" 2>&1 &
  GW=$!; pids+=("$GW")
  wait_port 19466
}

summary() { # oha json → "ok/total p50 p99" (ms)
  python3 -c '
import json,sys
d=json.load(open(sys.argv[1]))
codes=d.get("statusCodeDistribution",{})
ok=codes.get("200",0); total=sum(codes.values())
p=d["latencyPercentiles"]
p50=p["p50"]*1000; p99=p["p99"]*1000
print(f"{ok}/{total} p50={p50:.3f}ms p99={p99:.3f}ms")' "$1"
}

echo "== 1. micro-batching: forward-auth, cached ES256, $RATE checks/s for ${SECS}s, $CONNS connections"
for round in $(seq 1 "$ROUNDS"); do
  for items in 64 1; do
    gateway "$items"
    # Warm the cache and the connections.
    "$OHA" --no-tui --latency-correction -q 2000 -z 2s -c "$CONNS" -H "Authorization: Bearer $TOKEN" -H "X-Forwarded-Uri: /v3/demo" \
      --output-format quiet http://127.0.0.1:18601/auth || true
    j0=$(cpu_ticks "$JOTD"); g0=$(cpu_ticks "$GW")
    "$OHA" --no-tui --latency-correction -q "$RATE" -z "${SECS}s" -c "$CONNS" -H "Authorization: Bearer $TOKEN" -H "X-Forwarded-Uri: /v3/demo" \
      --output-format json http://127.0.0.1:18601/auth > "fa-$items-$round.json"
    j1=$(cpu_ticks "$JOTD"); g1=$(cpu_ticks "$GW")
    s=$(summary "fa-$items-$round.json")
    ok=${s%%/*}
    batches=$(curl -s http://127.0.0.1:19466/metrics | awk '/^jotd_gateway_batches_total/ {b+=$2} /^jotd_gateway_batch_items_total/ {i=$2} END {if (b) printf "%.1f", i/b}')
    python3 -c "
ok=$ok; j=($j1-$j0)*$US_PER_TICK; g=($g1-$g0)*$US_PER_TICK
print(f'max_items=$items round $round: {\"$s\"}; mean batch {\"$batches\"}; CPU per check: gateway {g/ok:.2f} us + jotd {j/ok:.2f} us = {(g+j)/ok:.2f} us')"
    kill "$GW"; wait "$GW" 2>/dev/null || true
  done
done

[ "${ONLY:-}" = batching ] && { echo "results in $WORK"; exit 0; }
echo "== 2. added latency: eth_getBalance at $LAT_RATE/s for ${LAT_SECS}s, proxy vs straight to the node"
gateway 64
BODY='{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["'$ACCOUNT'","latest"]}'
for round in $(seq 1 "$ROUNDS"); do
  "$OHA" --no-tui --latency-correction -q "$LAT_RATE" -z "${LAT_SECS}s" -c 16 -m POST -H "Content-Type: application/json" -d "$BODY" \
    --output-format json http://127.0.0.1:18545/ > "direct-$round.json"
  echo "direct round $round: $(summary "direct-$round.json")"
  "$OHA" --no-tui --latency-correction -q "$LAT_RATE" -z "${LAT_SECS}s" -c 16 -m POST -H "Content-Type: application/json" -H "Authorization: Bearer $TOKEN" -d "$BODY" \
    --output-format json http://127.0.0.1:18600/v3/demo > "proxy-$round.json"
  echo "proxy  round $round: $(summary "proxy-$round.json")"
done
echo "results in $WORK"

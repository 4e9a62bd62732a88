#!/usr/bin/env bash
# What a shared rate costs (issue "Protect the scanner from any one token",
# speed and memory): the latency a request of a token whose `rate` is
# counted in Redis (`[limits.shared]`, one round trip) adds over the same
# token counted on the replica and over a token without limits, as p50 and
# p99 on loopback, with one connection (a request's own latency) and with
# CONNS connections (under load); and what Redis keeps per limited token.
#
#   benches/shared_limits.sh                  # 10 s per run, 1 and 16 connections
#   DURATION=5 CONNS=8 benches/shared_limits.sh
#
# Loopback only; wrk runs are bounded by -d and `timeout`; every process
# started here is stopped on exit. Needs wrk, nginx and redis-server
# (apt-get installs them when missing). The gateway is pinned to CPU 0,
# wrk, the upstream and Redis to CPU 1. The rates are far above what the
# load reaches, so that every request is granted and only the count costs.
set -euo pipefail
DURATION=${DURATION:-10}
CONNS=${CONNS:-16}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$(mktemp -d -t tokengate-shared.XXXXXX)}
mkdir -p "$OUT"

need() { command -v "$1" >/dev/null; }
if ! need wrk || ! need nginx || ! need redis-server; then
  apt-get install -y -q wrk nginx-light redis-server >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q wrk nginx-light redis-server >/dev/null; }
fi
(cd "$ROOT" && cargo build --release -q)
BIN=$ROOT/target/release/tokengate

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_PORT=$(free_port); TG_PORT=$(free_port); ADMIN_PORT=$(free_port); REDIS_PORT=$(free_port)

mkdir -p "$OUT/nginx"
cat >"$OUT/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx; proxy_temp_path $OUT/nginx; fastcgi_temp_path $OUT/nginx;
  uwsgi_temp_path $OUT/nginx; scgi_temp_path $OUT/nginx;
  keepalive_requests 10000000;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 '<RESPONSE><SUCCESS>true</SUCCESS></RESPONSE>'; } }
}
NGINX
taskset -c 1 nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
taskset -c 1 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$OUT" >"$OUT/redis.log" 2>&1 &
pids+=($!)

# Three tokens: none (no limits), local (a rate on the replica), shared (a
# rate in Redis: its right is the only one with a rate when the store is
# configured, and `local` is then measured by a second gateway without it).
python3 - "$OUT" <<'PY'
import hashlib, sys
out = sys.argv[1]
def sha(s): return hashlib.sha256(s.encode()).hexdigest()
rights = '''[access_rights.plain]
actions = ["TARGETDATA"]

[access_rights.limited]
actions = ["TARGETDATA"]
rate = "100000/s"
burst = 100000
'''
tokens = ""
for name, right in [("none", "plain"), ("limited", "limited")]:
    tokens += f'''
[[token]]
name = "{name}"
active = true
token_sha256 = "{sha(name.upper() * 8)}"
ip_restriction = []
access_right = "{right}"
expires = "never"
'''
open(f"{out}/tokens.toml", "w").write(rights + tokens)
open(f"{out}/upstream.token", "w").write("U" * 32 + "\n")
PY

gateway() { # $1: name, $2: extra config
  cat >"$OUT/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$TG_PORT"
[upstream]
url = "http://127.0.0.1:$UP_PORT"
apptoken_file = "upstream.token"
[tokens]
file = "tokens.toml"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
$2
TOML
  taskset -c 0 "$BIN" run -c "$OUT/$1.toml" >"$OUT/$1.log" 2>&1 &
  TG=$!
  pids+=($TG)
  until curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null; do
    kill -0 "$TG" || { cat "$OUT/$1.log"; exit 1; }
    sleep 0.05
  done
}

# p50 and p99 in microseconds from `wrk --latency`.
measure() { # $1: token secret, $2: connections
  local url="http://127.0.0.1:$TG_PORT/opi/XMLAPI?APPTOKEN=$1&ACTION=TARGETDATA"
  timeout $((DURATION + 30)) taskset -c 1 wrk -t1 -c"$2" -d"${DURATION}s" --latency "$url" >"$OUT/wrk.txt"
  python3 - "$OUT/wrk.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def us(v, unit): return float(v) * {"us": 1, "ms": 1000, "s": 1e6}[unit]
p = {m[0]: us(m[1], m[2]) for m in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)[1]
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{p['50']:.0f} {p['99']:.0f} {float(rps):.0f} {non2xx[1] if non2xx else 0}")
PY
}

NONE=$(printf 'NONE%.0s' {1..8}); LIMITED=$(printf 'LIMITED%.0s' {1..8})
declare -A R
gateway local ""
for c in 1 "$CONNS"; do
  R[none,$c]=$(measure "$NONE" "$c")
  R[local,$c]=$(measure "$LIMITED" "$c")
done
kill "$TG"; wait "$TG" 2>/dev/null || true
gateway shared "[limits.shared]
redis = \"redis://127.0.0.1:$REDIS_PORT\"
timeout = \"50ms\""
# The store connects in the background: wait until a request counted there.
until [ "$(redis-cli -p "$REDIS_PORT" dbsize)" -gt 0 ]; do
  curl -fsS -o /dev/null "http://127.0.0.1:$TG_PORT/opi/XMLAPI?APPTOKEN=$LIMITED&ACTION=TARGETDATA" || true
  sleep 0.05
done
for c in 1 "$CONNS"; do
  R[shared,$c]=$(measure "$LIMITED" "$c")
done
errors=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^tokengate_rate_limit_store_errors_total/{s+=$2} END{print s+0}')
key=$(redis-cli -p "$REDIS_PORT" --raw keys 'tokengate:rate:*' | head -1)
key_bytes=$(redis-cli -p "$REDIS_PORT" memory usage "$key")

echo
echo "latency in microseconds (wrk -t1, ${DURATION}s per run; gateway on CPU 0, the rest on CPU 1)"
printf '%-12s %6s %8s %8s %10s %8s\n' token conns p50 p99 req/s non-2xx
for c in 1 "$CONNS"; do
  for k in none local shared; do
    read -r p50 p99 rps bad <<<"${R[$k,$c]}"
    printf '%-12s %6s %8s %8s %10s %8s\n' "$k" "$c" "$p50" "$p99" "$rps" "$bad"
  done
  read -r n50 n99 _ _ <<<"${R[none,$c]}"
  read -r s50 s99 _ _ <<<"${R[shared,$c]}"
  echo "  added by the shared rate over no limit, $c connection(s): p50 +$((s50 - n50)) us, p99 +$((s99 - n99)) us"
done
echo "store errors during the shared runs: $errors"
echo "Redis memory for one limited token's key ($key): $key_bytes bytes"
echo "logs and configs in $OUT"

#!/usr/bin/env bash
# Reload at scale (issue "Token file lifecycle", point 5): the time a
# N-token file takes to reload, the p99 latency of requests in flight while
# it does compared with the same load without reloads, and the resident
# memory per token.
#
#   benches/reload_under_load.sh            # N=1000000, 3 reloads, 15 s of load each
#   N=100000 RELOADS=5 DURATION=10 benches/reload_under_load.sh
#
# Loopback only; wrk runs are bounded by -d and `timeout`; every process
# started here is stopped on exit. Needs wrk and nginx (apt-get installs them
# when missing). The gateway is pinned to CPU 0, wrk and the upstream to CPU 1.
set -euo pipefail
N=${N:-1000000}
RELOADS=${RELOADS:-3}
DURATION=${DURATION:-15}
CONNS=${CONNS:-16}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${PEERS_DIR:-$ROOT/../shared/peers}
OUT=${OUT:-$(mktemp -d -t tokengate-reload.XXXXXX)}
mkdir -p "$OUT"

for tool in wrk nginx; do
  command -v "$tool" >/dev/null || apt-get install -y -q wrk nginx-light >/dev/null || apt-get install -y -q wrk nginx
done
(cd "$ROOT" && cargo build --release -q)
BIN=$ROOT/target/release/tokengate

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_PORT=$(free_port); TG_PORT=$(free_port); ADMIN_PORT=$(free_port)

echo "generating $N tokens in $OUT ..."
python3 "$PEERS/gen_tokens.py" "$N" "$OUT/tok" --seed 7 >/dev/null
cp "$OUT/tok/tokens.toml" "$OUT/tokens.toml"
cp "$OUT/tok/upstream.token" "$OUT/upstream.token"
TOKEN=$(awk -F'\t' '$1=="read-only"{print $2; exit}' "$OUT/tok/valid_tokens.tsv")

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

cat >"$OUT/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$TG_PORT"
[upstream]
url = "http://127.0.0.1:$UP_PORT"
apptoken_file = "upstream.token"
[tokens]
file = "tokens.toml"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
TOML
start=$(date +%s%N)
taskset -c 0 "$BIN" run -c "$OUT/gateway.toml" >"$OUT/tokengate.log" 2>&1 &
TG=$!
pids+=($TG)
URL="http://127.0.0.1:$TG_PORT/opi/XMLAPI?APPTOKEN=$TOKEN&ACTION=TARGETDATA"
until curl -fsS -o /dev/null "$URL" 2>/dev/null; do
  kill -0 "$TG" || { cat "$OUT/tokengate.log"; exit 1; }
  sleep 0.05
done
cold=$(( ($(date +%s%N) - start) / 1000000 ))
rss_kib=$(awk '/VmRSS/{print $2}' "/proc/$TG/status")

# A baseline with 10 tokens for the memory per token.
mkdir -p "$OUT/small"
python3 "$PEERS/gen_tokens.py" 10 "$OUT/small" --seed 7 >/dev/null
sed -e "s/$TG_PORT/$(free_port)/" -e "s/$ADMIN_PORT/$(free_port)/" "$OUT/gateway.toml" >"$OUT/small/gateway.toml"
"$BIN" run -c "$OUT/small/gateway.toml" >"$OUT/small.log" 2>&1 &
SMALL=$!
pids+=($SMALL)
sleep 1
rss_small_kib=$(awk '/VmRSS/{print $2}' "/proc/$SMALL/status")
kill "$SMALL"

run_wrk() { timeout $((DURATION + 10)) taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$URL" >"$1"; }
p99() { awk '/^ +99%/{print $2}' "$1"; }
errors() { awk '/Non-2xx|Socket errors/{print}' "$1"; }

echo "load without reloads ..."
run_wrk "$OUT/wrk-steady.txt"
echo "load with $RELOADS reloads of $N tokens (renamed file; the watcher alone) ..."
# Successful loads so far, from the admin listener (cheap; the access log is
# large by now). The first load counts, as in the metric.
reloads() {
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null |
    awk '/^tokengate_reloads_total\{outcome="success"\}/{print $2; f=1} END{if(!f) print 0}'
}
before=$(reloads)
run_wrk "$OUT/wrk-reload.txt" &
WRK=$!
sleep 1
for i in $(seq "$RELOADS"); do
  # A real edit (the gateway skips a file whose text did not change).
  { cat "$OUT/tok/tokens.toml"; echo "# edit $i"; } >"$OUT/tokens.toml.new" && mv "$OUT/tokens.toml.new" "$OUT/tokens.toml"
  # The next edit only once this one has been applied (bounded wait).
  for _ in $(seq 300); do [ "$(reloads)" -ge $((before + i)) ] && break; sleep 0.05; done
  sleep 0.5
done
wait "$WRK"
after=$(reloads)
took=$(grep -F "token file reloaded" "$OUT/tokengate.log" | tail -n $((after - before)) | sed -E 's/.*took_ms=([0-9]+).*/\1/' | paste -sd, -)

cat <<REPORT

tokengate reload at scale ($(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -m))
  tokens                       $N
  cold start until a 200       ${cold} ms
  reloads during load          $((after - before)) of $RELOADS (watcher only), read+parse+validate+swap took_ms: $took
  p99 without reloads          $(p99 "$OUT/wrk-steady.txt")   ($(awk '/Requests\/sec/{print $2}' "$OUT/wrk-steady.txt") req/s)
  p99 with reloads             $(p99 "$OUT/wrk-reload.txt")   ($(awk '/Requests\/sec/{print $2}' "$OUT/wrk-reload.txt") req/s)
  failed requests              steady: $(errors "$OUT/wrk-steady.txt" | wc -l) lines, reloads: $(errors "$OUT/wrk-reload.txt" | wc -l) lines $(errors "$OUT/wrk-reload.txt" | tr '\n' ' ')
  resident memory              $((rss_kib / 1024)) MiB with $N tokens, $((rss_small_kib / 1024)) MiB with 10
  memory per token             $(( (rss_kib - rss_small_kib) * 1024 / N )) bytes
  (wrk output and logs in $OUT)
REPORT

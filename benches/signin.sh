#!/usr/bin/env bash
# Accounts (--accounts, docs/ACCOUNTS.md): how many password sign-ins a second
# this machine serves, and what a burst of 200 concurrent sign-ins does to a
# concurrent GET's latency (the hashes run on the blocking pool, at most
# --password-hash-concurrency at once, so the async workers keep answering).
#
#   benches/signin.sh                       # ~1 minute
#   BIN=/tmp/chatbot-api DURATION=10s benches/signin.sh
#
# Builds nothing: runs BIN (default target/release/chatbot-api) on the default
# store (SQLite in a temp dir) and default logging, pinned to core 0, with wrk on
# core 1 (as benches/lib.sh). The sign-in limit is raised so that it does not
# decide the numbers. Needs wrk, taskset, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
PORT=${PORT:-18480}
BURST=${BURST:-200}
for tool in wrk taskset curl python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/signin-bench-XXXXXX)
BIN=${BIN:-target/release/chatbot-api}
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

taskset -c 0 "$BIN" --store "sqlite:$WORK/chat.db" --port "$PORT" --accounts --signup open \
    --signin-limit 1000000 --signin-limit-address 1000000 --api-key bench-key \
    2>"$WORK/server.log" &
SERVER=$!
for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$PORT/health" && break; sleep 0.1; done
BASE="http://127.0.0.1:$PORT"
curl -sf -o /dev/null -H 'content-type: application/json' \
    -d '{"username":"bench","password":"bench password"}' "$BASE/auth/register"
curl -sf -o /dev/null -H 'content-type: application/json' -H 'authorization: Bearer bench-key' \
    -d '{"user_message":"Hello!","session_id":"read-me"}' "$BASE/chat"

cat >"$WORK/signin.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "username=bench&password=bench%20password"
EOF
rate() { awk '/Requests\/sec/ {printf "%.0f", $2}'; }
non2xx() { awk '/Non-2xx/ {print $NF}'; }

echo "== sign-ins a second (wrk -c8, $DURATION, Argon2id m=19456 t=2 p=1)"
OUT=$(taskset -c 1 wrk -t1 -c8 -d"$DURATION" -s "$WORK/signin.lua" "$BASE/auth/token")
echo "sign-ins/s: $(echo "$OUT" | rate)   refused: $(echo "$OUT" | non2xx)"

get_latency() {
    taskset -c 1 wrk -t1 -c4 -d"$1" --latency -H 'authorization: Bearer bench-key' \
        "$BASE/chat/history/read-me"
}
pct() { awk -v p="$1" '$1 == p {print $2}'; }

echo "== GET /chat/history latency alone"
ALONE=$(get_latency 5s)
echo "p50 $(echo "$ALONE" | pct 50%)  p99 $(echo "$ALONE" | pct 99%)  req/s $(echo "$ALONE" | rate)"

echo "== the same GETs while $BURST sign-ins arrive at once"
get_latency 8s >"$WORK/during.txt" &
WRK=$!
sleep 1
python3 - "$BASE" "$BURST" <<'EOF'
import sys, threading, time, urllib.request
base, n = sys.argv[1], int(sys.argv[2])
gate = threading.Barrier(n)
results = []
def one():
    req = urllib.request.Request(base + "/auth/token", data=b"username=bench&password=bench%20password",
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    gate.wait()
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            results.append((r.status, time.monotonic() - start))
    except urllib.error.HTTPError as e:
        results.append((e.code, time.monotonic() - start))
threads = [threading.Thread(target=one) for _ in range(n)]
started = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
took = time.monotonic() - started
ok = sum(1 for s, _ in results if s == 200)
times = sorted(t for _, t in results)
print(f"burst: {ok}/{n} signed in within {took:.2f} s (each waited p50 {times[n//2]*1000:.0f} ms, "
      f"max {times[-1]*1000:.0f} ms); other answers: {sorted(set(s for s, _ in results if s != 200))}")
EOF
wait "$WRK"
DURING=$(cat "$WORK/during.txt")
echo "GET during the burst: p50 $(echo "$DURING" | pct 50%)  p99 $(echo "$DURING" | pct 99%)  req/s $(echo "$DURING" | rate)"
echo "server RSS after: $(awk '/VmHWM/ {print $2, $3}' /proc/$SERVER/status) peak"

#!/usr/bin/env bash
# POST /chat throughput at 32 connections for every store backend, in one run,
# with the group commit's exchanges per commit. Server pinned to core 0, wrk to core 1.
#
#   benches/stores.sh            # 10 s per backend
#   DURATION=30s benches/stores.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
PG_URL=${CHATBOT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
PORT=${PORT:-18080}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }

cargo build --release --quiet
BIN=target/release/chatbot-api
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

stores=(memory "sqlite:$WORK/bench.db")
if psql "$PG_URL" -qAtc 'DROP SCHEMA IF EXISTS chatbot_bench CASCADE; CREATE SCHEMA chatbot_bench' >/dev/null 2>&1; then
    stores+=("$PG_URL?options=-c%20search_path%3Dchatbot_bench")
else
    echo "note: PostgreSQL at $PG_URL not reachable; skipping it" >&2
fi

printf '| store | requests/s | p50 | p99 | exchanges per commit | vs memory |\n|---|---|---|---|---|---|\n'
memory_rps=""
for store in "${stores[@]}"; do
    RUST_LOG=warn,chatbot_api::store=info taskset -c 0 "$BIN" --store "$store" --port "$PORT" 2>"$WORK/log" &
    pid=$!
    for _ in $(seq 100); do curl -s "127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
    line=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s benches/post.lua "http://127.0.0.1:$PORT" | grep '^RESULT')
    kill -TERM "$pid"; wait "$pid" || true
    rps=$(sed -E 's/.*rps=([0-9]+).*/\1/' <<<"$line")
    p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$line")
    p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line")
    per_commit="-"
    if totals=$(grep -o 'commits=[0-9]* exchanges=[0-9]*' "$WORK/log"); then
        commits=$(sed -E 's/commits=([0-9]+).*/\1/' <<<"$totals")
        exchanges=$(sed -E 's/.*exchanges=([0-9]+)/\1/' <<<"$totals")
        per_commit=$(awk -v e="$exchanges" -v c="$commits" 'BEGIN { printf "%.1f", (c ? e / c : 0) }')
    fi
    [ -z "$memory_rps" ] && memory_rps=$rps
    ratio=$(awk -v a="$rps" -v b="$memory_rps" 'BEGIN { printf "%.2f", a / b }')
    name=${store%%\?*}; name=${name/$WORK\//}
    printf '| %s | %s | %s µs | %s µs | %s | %s× |\n' "$name" "$rps" "$p50" "$p99" "$per_commit" "$ratio"
done
psql "$PG_URL" -qAtc 'DROP SCHEMA IF EXISTS chatbot_bench CASCADE' >/dev/null 2>&1 || true

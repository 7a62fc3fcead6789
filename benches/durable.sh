#!/usr/bin/env bash
# The durable stores against memory mode, all in one run (issue #12's targets):
# SQLite and PostgreSQL POST and GET as ratios of memory mode, a cold SQLite
# session against a warm one, the default (info) log against RUST_LOG=warn,
# and a restart over 1,000,000 stored exchanges.
#
#   benches/durable.sh                   # ~6 minutes
#   DURATION=10s benches/durable.sh
#
# Each server is pinned to core 0 and wrk to core 1 (benches/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
PG_URL=${CHATBOT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
PORT=${PORT:-18091}
RESTART_EXCHANGES=${RESTART_EXCHANGES:-1000000}
RESTART_SESSIONS=${RESTART_SESSIONS:-10000}
RESTART_CACHE_MB=${RESTART_CACHE_MB:-16}
source benches/lib.sh

declare -A R
measure() { # name: POST at 32 and 256; GET of 10, 100, 10,000 (warm); GET over 1,000 sessions of 100
    local name=$1
    for c in 32 256; do R[$name/post/$c]=$(load "$c" benches/post.lua /); done
    for n in 10 100 10000; do
        populate "h$n" "$n"
        # One read first: a SQLite session is in RAM from its first read on.
        curl -s -o /dev/null "127.0.0.1:$PORT/chat/history/h$n"
        R[$name/get$n/32]=$(load 32 "" "/chat/history/h$n")
    done
    R[$name/get100/256]=$(load 256 "" "/chat/history/h100")
}
many() { # name: 1,000 sessions of 100 exchanges, read in turn
    local name=$1
    populate "" 100000
    # A first pass, so the sessions are in RAM (wrk runs for all of -d).
    SESSIONS=1000 taskset -c 1 wrk -t1 -c1 -d2s -s benches/get_many.lua "http://127.0.0.1:$PORT" >/dev/null
    R[$name/many/32]=$(SESSIONS=1000 load 32 benches/get_many.lua /)
}

# ONLY_RESTART=1 runs the restart measurement alone.
if [ -z "${ONLY_RESTART:-}" ]; then
echo "== memory" >&2
start memory target/release/chatbot-api --store memory --port "$PORT"
measure memory
many memory
stop

echo "== sqlite" >&2
start sqlite target/release/chatbot-api --store "sqlite:$WORK/bench.db" --port "$PORT"
measure sqlite
many sqlite
stop
PER_COMMIT=$(awk -F'commits=|exchanges=' '/group commit totals/ { split($2,c," "); split($3,e," "); if (c[1] > 0) printf "%.1f", e[1] / c[1] }' "$WORK/sqlite.log")

echo "== sqlite, cold: a 1 MiB cache, 1,000 sessions of 100 read in turn" >&2
start sqlite-cold target/release/chatbot-api --store "sqlite:$WORK/bench.db" --port "$PORT" --cache-mb 1
R[cold/many/32]=$(SESSIONS=1000 load 32 benches/get_many.lua /)
stop

echo "== default logging (info) against RUST_LOG=warn" >&2
for store in memory "sqlite:$WORK/log.db"; do
    name=${store%%:*}
    for log in warn default; do
        rm -f "$WORK/log.db"*
        SERVER_LOG=$log start "$name-$log" target/release/chatbot-api --store "$store" --port "$PORT"
        R[$name-$log/post/32]=$(load 32 benches/post.lua /)
        populate h100 100
        R[$name-$log/get100/32]=$(load 32 "" /chat/history/h100)
        stop
    done
done

if psql "$PG_URL" -qAtc 'DROP SCHEMA IF EXISTS chatbot_bench CASCADE; CREATE SCHEMA chatbot_bench' >/dev/null 2>&1; then
    echo "== postgres" >&2
    start postgres target/release/chatbot-api --store "$PG_URL?options=-c%20search_path%3Dchatbot_bench" --port "$PORT"
    for c in 32 256; do R[postgres/post/$c]=$(load "$c" benches/post.lua /); done
    populate h100 100
    R[postgres/get100/32]=$(load 32 "" /chat/history/h100)
    R[postgres/get100/256]=$(load 256 "" /chat/history/h100)
    stop
else
    echo "note: no PostgreSQL at $PG_URL; skipping it" >&2
fi
fi

echo "== restart over $RESTART_EXCHANGES exchanges ($RESTART_SESSIONS sessions), --cache-mb $RESTART_CACHE_MB" >&2
start fill target/release/chatbot-api --store "sqlite:$WORK/big.db" --port "$PORT"
SESSIONS=$RESTART_SESSIONS populate "" "$RESTART_EXCHANGES"
stop
FILE_MB=$(du -m "$WORK/big.db" | cut -f1)
t0=$(date +%s%N)
BENCH_PORT=$PORT RUST_LOG=warn taskset -c 0 target/release/chatbot-api --store "sqlite:$WORK/big.db" --port "$PORT" --cache-mb "$RESTART_CACHE_MB" 2>"$WORK/restart.log" &
PID=$!
until curl -sf -o /dev/null "127.0.0.1:$PORT/chat/history/bench-1"; do sleep 0.005; done
FIRST_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
RSS_START=$(rss_kib)
t0=$(date +%s%N)
# Every session once, in turn, over one keep-alive connection (wrk always runs for all of -d).
taskset -c 1 python3 - "$PORT" "$RESTART_SESSIONS" <<'PY'
import http.client, sys
port, sessions = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
for i in range(sessions):
    conn.request("GET", f"/chat/history/bench-{i}")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, (i, response.status)
PY
READ_ALL_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
RSS_AFTER=$(rss_kib)
stop

rps_of() { cut -d' ' -f1 <<<"${R[$1]:-0 0 0}"; }
line() { # label, key, reference key
    local v=${R[$2]:-}
    [ -z "$v" ] && return
    read -r r p50 p99 <<<"$v"
    printf '| %s | %s | %s µs | %s µs | %s |\n' "$1" "$r" "$p50" "$p99" "$(ratio "$r" "$(rps_of "$3")")"
}

echo
echo "### SQLite and PostgreSQL against memory mode"
echo
echo "| workload | store | requests/s | p50 | p99 | vs memory |"
echo "|---|---|---|---|---|---|"
for w in "post/32:POST /chat, 32 connections" "post/256:POST /chat, 256 connections" \
         "get10/32:GET 10 exchanges, 32" "get100/32:GET 100 exchanges, 32" "get100/256:GET 100 exchanges, 256" \
         "get10000/32:GET 10,000 exchanges, 32" "many/32:GET 100 exchanges over 1,000 sessions, 32"; do
    key=${w%%:*} label=${w#*:}
    for name in memory sqlite postgres; do line "$label | $name" "$name/$key" "memory/$key"; done
done
line "GET 100 exchanges over 1,000 sessions, 32 | sqlite, cold (--cache-mb 1)" cold/many/32 memory/many/32
echo
echo "Cold against warm SQLite (the same 1,000 sessions read in turn): $(ratio "$(rps_of sqlite/many/32)" "$(rps_of cold/many/32)") (warm / cold)."
echo "SQLite exchanges per commit (whole run): ${PER_COMMIT:--}."
echo
echo "### Default logging (info, one access-log line per request) against RUST_LOG=warn"
echo
echo "| server, workload | warn | info (default) | info / warn |"
echo "|---|---|---|---|"
for name in memory sqlite; do
    for w in post/32 get100/32; do
        printf '| %s, %s | %s | %s | %s |\n' "$name" "$w" "$(rps_of "$name-warn/$w")" "$(rps_of "$name-default/$w")" \
            "$(ratio "$(rps_of "$name-default/$w")" "$(rps_of "$name-warn/$w")")"
    done
done
echo
echo "### Restart over $RESTART_EXCHANGES exchanges in $RESTART_SESSIONS sessions (file: $FILE_MB MB), --cache-mb $RESTART_CACHE_MB"
echo
echo "| first request answered after start | RSS then | every session read once | RSS after |"
echo "|---|---|---|---|"
echo "| $FIRST_MS ms | $((RSS_START / 1024)) MiB | $READ_ALL_MS ms | $((RSS_AFTER / 1024)) MiB |"
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); duration per run: $DURATION"

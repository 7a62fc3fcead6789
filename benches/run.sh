#!/usr/bin/env bash
# Side-by-side load benchmark, all in one run (this machine is shared and
# noisy: compare ratios within a run, not numbers across runs).
#
#   benches/run.sh                  # ~6 minutes
#   DURATION=10s benches/run.sh     # longer runs
#
# Servers (each pinned to core 0, wrk to core 1, keep-alive):
#   limit    benches/limit.rs: bare axum, POST /echo and a prebuilt GET /static
#   floor    benches/floor.rs: the naive port (RwLock<HashMap<String, Vec<Entry>>>, clone + serialize)
#   memory   chatbot-api --store memory
#   sqlite   chatbot-api --store sqlite:… (durable: a 200 means committed)
#   postgres chatbot-api --store postgres://… (if a server answers)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
PG_URL=${CHATBOT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
PORT=${PORT:-18090}
MEMORY_EXCHANGES=${MEMORY_EXCHANGES:-200000}

source benches/lib.sh

declare -A R   # R[server/workload/connections] = "rps p50 p99"
CONNS=(1 32 256)
measure_chat_server() { # name
    local name=$1
    for c in "${CONNS[@]}"; do R[$name/post/$c]=$(load "$c" benches/post.lua /); done
    for n in 10 100 10000; do
        populate "h$n" "$n"
        for c in "${CONNS[@]}"; do R[$name/get$n/$c]=$(load "$c" "" "/chat/history/h$n"); done
    done
}

echo "== limit" >&2
start limit "${BIN[limit]}"
for c in "${CONNS[@]}"; do R[limit/post/$c]=$(POST_PATH=/echo load "$c" benches/post.lua /); done
for c in "${CONNS[@]}"; do R[limit/get100/$c]=$(load "$c" "" /static); done
stop

echo "== floor" >&2
start floor "${BIN[floor]}"
measure_chat_server floor
stop

STORES=(memory "sqlite:$WORK/bench.db")
NAMES=(memory sqlite)
if psql "$PG_URL" -qAtc 'DROP SCHEMA IF EXISTS chatbot_bench CASCADE; CREATE SCHEMA chatbot_bench' >/dev/null 2>&1; then
    STORES+=("$PG_URL?options=-c%20search_path%3Dchatbot_bench"); NAMES+=(postgres)
else
    echo "note: no PostgreSQL at $PG_URL; skipping it" >&2
fi
declare -A PER_COMMIT
for i in "${!STORES[@]}"; do
    name=${NAMES[$i]}
    echo "== $name" >&2
    start "$name" target/release/chatbot-api --store "${STORES[$i]}" --port "$PORT"
    measure_chat_server "$name"
    stop
    PER_COMMIT[$name]=$(awk -F'commits=|exchanges=' '/group commit totals/ { split($2,c," "); split($3,e," "); if (c[1] > 0) printf "%.1f", e[1] / c[1] }' "$WORK/$name.log")
done

echo "== memory per exchange ($MEMORY_EXCHANGES exchanges over 1,000 sessions)" >&2
declare -A BYTES
for name in floor memory; do
    if [ "$name" = floor ]; then start floor "${BIN[floor]}"; else start memory target/release/chatbot-api --store memory --port "$PORT"; fi
    before=$(rss_kib)
    populate "" "$MEMORY_EXCHANGES"
    after=$(rss_kib)
    BYTES[$name]=$(( (after - before) * 1024 / MEMORY_EXCHANGES ))
    stop
done

row() { # label, key, reference key
    local v=${R[$2]:-} ref=""
    [ -z "$v" ] && return
    read -r r p50 p99 <<<"$v"
    [ -n "${3:-}" ] && ref=$(ratio "$r" "$(rps "$3")")
    printf '| %s | %s | %s µs | %s µs | %s |\n' "$1" "$r" "$p50" "$p99" "$ref"
}

echo
echo "### POST /chat (1,000 sessions)"
echo
echo "| server, connections | requests/s | p50 | p99 | vs limit (/echo) |"
echo "|---|---|---|---|---|"
for c in "${CONNS[@]}"; do
    row "limit /echo, $c" "limit/post/$c"
    for name in floor memory sqlite postgres; do row "$name, $c" "$name/post/$c" "limit/post/$c"; done
done
for n in 10 100 10000; do
    echo
    echo "### GET /chat/history/{id}, $n exchanges"
    echo
    if [ "$n" = 100 ]; then echo "| server, connections | requests/s | p50 | p99 | vs limit (/static) |"; else echo "| server, connections | requests/s | p50 | p99 | vs floor |"; fi
    echo "|---|---|---|---|---|"
    for c in "${CONNS[@]}"; do
        if [ "$n" = 100 ]; then
            row "limit /static, $c" "limit/get100/$c"
            for name in floor memory sqlite postgres; do row "$name, $c" "$name/get100/$c" "limit/get100/$c"; done
        else
            row "floor, $c" "floor/get$n/$c"
            for name in memory sqlite postgres; do row "$name, $c" "$name/get$n/$c" "floor/get$n/$c"; done
        fi
    done
done
echo
echo "### Durable writes, 32 connections"
echo
echo "| store | requests/s | exchanges per commit | vs memory |"
echo "|---|---|---|---|"
for name in sqlite postgres; do
    [ -n "${R[$name/post/32]:-}" ] || continue
    printf '| %s | %s | %s | %s |\n' "$name" "$(rps "$name/post/32")" "${PER_COMMIT[$name]:--}" "$(ratio "$(rps "$name/post/32")" "$(rps memory/post/32)")"
done
echo
echo "### Resident memory per stored exchange (seed-sized, $MEMORY_EXCHANGES over 1,000 sessions)"
echo
echo "| server | bytes per exchange |"
echo "|---|---|"
for name in floor memory; do printf '| %s | %s |\n' "$name" "${BYTES[$name]}"; done
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); duration per run: $DURATION"

#!/usr/bin/env bash
# PostgreSQL against memory mode (#12's targets: GET of 100 exchanges at
# least 0.25x memory, POST /chat at least 0.2x), the working tree against
# the same server built from BASE_REV (default: HEAD, so an uncommitted
# change is measured against what it changes), alternating, ROUNDS rounds,
# 32 connections (and 256 for POST), RUST_LOG=warn. The database shares the machine's two cores
# with the server (core 0) and wrk (core 1).
#
#   benches/postgres.sh                       # ~5 minutes plus one release build of BASE_REV
#   BASE_REV=<commit> ROUNDS=5 DURATION=10s benches/postgres.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
PORT=${PORT:-18096}
PG_URL=${CHATBOT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
BASE_REV=${BASE_REV:-HEAD}
ROUNDS=${ROUNDS:-3}
source benches/lib.sh
command -v psql >/dev/null || { echo "needs psql (apt-get install postgresql-client)"; exit 1; }

BASE_BINARY=$(base_binary "$BASE_REV" "${BASE_TREE:-$PWD/target/postgres-base}")
SCHEMA_URL="$PG_URL?options=-c%20search_path%3Dchatbot_bench"

declare -A R
for round in $(seq "$ROUNDS"); do
    for which in memory base new; do
        binary=target/release/chatbot-api
        [ "$which" = base ] && binary=$BASE_BINARY
        store=memory
        if [ "$which" != memory ]; then
            psql "$PG_URL" -qAtc 'DROP SCHEMA IF EXISTS chatbot_bench CASCADE' -c 'CREATE SCHEMA chatbot_bench' >/dev/null 2>&1
            store=$SCHEMA_URL
        fi
        echo "== round $round, $which" >&2
        start "$which" "$binary" --store "$store" --port "$PORT"
        R[$which/post/$round]=$(load 32 benches/post.lua /)
        R[$which/post256/$round]=$(load 256 benches/post.lua /)
        populate h100 100
        curl -s -o /dev/null "127.0.0.1:$PORT/chat/history/h100"
        R[$which/get/$round]=$(load 32 "" /chat/history/h100)
        stop
    done
done

echo
echo "### PostgreSQL against memory mode: 32 connections unless said, $ROUNDS rounds"
echo
echo "| server | request | median req/s | p50 / p99 (µs) | vs memory | rounds (vs memory) |"
echo "|---|---|---|---|---|---|"
for what in post post256 get; do
    label="POST /chat, 32 connections"
    [ "$what" = post256 ] && label="POST /chat, 256 connections"
    [ "$what" = get ] && label="GET 100 exchanges"
    for which in memory base new; do ab_row "$which" "$what" "$label"; done
done
echo
echo "base: $(git rev-parse --short "$BASE_REV"); new: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src migrations || echo ' + uncommitted'); machine: $(nproc) cores; duration per run: $DURATION"

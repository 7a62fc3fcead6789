#!/usr/bin/env bash
# The default store (SQLite) against memory mode (#12's targets: POST /chat
# at least 0.5x memory at 32 and 256 connections, every 200 committed; a
# warm GET of 100 exchanges at least 0.8x), the working tree against the
# same server built from BASE_REV (default: HEAD, so an uncommitted change is
# measured against what it changes), alternating, ROUNDS rounds,
# RUST_LOG=warn, default flags (`--sync fsync`). p99 shows what the log's
# folds cost in latency.
#
#   benches/sqlite.sh                       # ~6 minutes plus one release build of BASE_REV
#   BASE_REV=<commit> ROUNDS=5 DURATION=10s benches/sqlite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
PORT=${PORT:-18097}
PG_URL=${CHATBOT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
BASE_REV=${BASE_REV:-HEAD}
ROUNDS=${ROUNDS:-3}
source benches/lib.sh

BASE_BINARY=$(base_binary "$BASE_REV" "${BASE_TREE:-$PWD/target/sqlite-base}")

declare -A R
for round in $(seq "$ROUNDS"); do
    for which in memory base new; do
        binary=target/release/chatbot-api
        [ "$which" = base ] && binary=$BASE_BINARY
        store=memory
        [ "$which" != memory ] && store="sqlite:$WORK/run.db"
        for c in 32 256; do
            rm -f "$WORK"/run.db*
            echo "== round $round, $which, $c connections" >&2
            start "$which" "$binary" --store "$store" --port "$PORT"
            R[$which/post$c/$round]=$(load "$c" benches/post.lua /)
            if [ "$c" = 32 ]; then
                populate h100 100
                curl -s -o /dev/null "127.0.0.1:$PORT/chat/history/h100"
                R[$which/get/$round]=$(load 32 "" /chat/history/h100)
            fi
            stop
        done
    done
done

echo
echo "### SQLite (default flags) against memory mode: $ROUNDS rounds"
echo
echo "| server | request | median req/s | p50 / p99 (µs) | vs memory | rounds (vs memory) |"
echo "|---|---|---|---|---|---|"
for what in post32 post256 get; do
    case $what in
        post32) label="POST /chat, 32 connections" ;;
        post256) label="POST /chat, 256 connections" ;;
        get) label="GET 100 exchanges, 32 connections" ;;
    esac
    for which in memory base new; do ab_row "$which" "$what" "$label"; done
done
echo
echo "base: $(git rev-parse --short "$BASE_REV"); new: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src migrations || echo ' + uncommitted'); machine: $(nproc) cores; duration per run: $DURATION"

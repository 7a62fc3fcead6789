#!/usr/bin/env bash
# What recording metrics costs (#16's target: POST /chat at most 5% slower):
# the server as it is against the same server built from BASE_REV (default:
# the commit before /metrics arrived), in one run, alternating A B A B A B,
# on the memory store and on the default (SQLite) store, 32 connections.
#
#   benches/metrics.sh                  # ~5 minutes plus one release build of BASE_REV
#   SERVER_LOG=default benches/metrics.sh   # with the default (info) log, as users run it
#   BASE_REV=<commit> DURATION=10s benches/metrics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
PORT=${PORT:-18093}
PG_URL=${CHATBOT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
BASE_REV=${BASE_REV:-$(git log --format=%H -1 --grep='^GET /metrics (#16)')~1}
ROUNDS=${ROUNDS:-3}
source benches/lib.sh

BASE_BINARY=$(base_binary "$BASE_REV" "${BASE_TREE:-$PWD/target/metrics-base}")
declare -A R
for store in memory sqlite; do
    for round in $(seq "$ROUNDS"); do
        for which in base metrics; do
            binary=target/release/chatbot-api
            [ "$which" = base ] && binary=$BASE_BINARY
            arg=memory
            [ "$store" = sqlite ] && { rm -f "$WORK"/m.db*; arg="sqlite:$WORK/m.db"; }
            echo "== $store, round $round, $which" >&2
            start "$which" "$binary" --store "$arg" --port "$PORT"
            R[$store/$which/$round]=$(load 32 benches/post.lua /)
            stop
        done
    done
done

echo
echo "### What recording metrics costs: POST /chat, 32 connections, $ROUNDS rounds of A/B"
echo
echo "| store | without metrics (median req/s) | with metrics (median req/s) | with / without | rounds (with / without) |"
echo "|---|---|---|---|---|"
for store in memory sqlite; do
    base=$(for r in $(seq "$ROUNDS"); do cut -d' ' -f1 <<<"${R[$store/base/$r]}"; done | median)
    with=$(for r in $(seq "$ROUNDS"); do cut -d' ' -f1 <<<"${R[$store/metrics/$r]}"; done | median)
    rounds=$(for r in $(seq "$ROUNDS"); do
        ratio "$(cut -d' ' -f1 <<<"${R[$store/metrics/$r]}")" "$(cut -d' ' -f1 <<<"${R[$store/base/$r]}")"; echo -n " "; done)
    echo "| $store | $base | $with | $(ratio "$with" "$base") | $rounds|"
done
echo
echo "base: $(git rev-parse --short "$BASE_REV"); log: ${SERVER_LOG:-RUST_LOG=warn}; machine: $(nproc) cores; duration per run: $DURATION"

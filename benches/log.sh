#!/usr/bin/env bash
# What the default log costs (#12's target: the default `info` log, one
# access-log line per request, at least 0.9x the same server with
# RUST_LOG=warn): one binary, alternating warn and default, ROUNDS rounds,
# POST /chat and GET of a 100-exchange history at 32 connections, on the
# memory store and on the default SQLite store.
#
#   benches/log.sh                      # ~4 minutes
#   ROUNDS=5 DURATION=10s benches/log.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
PORT=${PORT:-18095}
PG_URL=${CHATBOT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
ROUNDS=${ROUNDS:-3}
source benches/lib.sh

declare -A R
for store in memory sqlite; do
    for round in $(seq "$ROUNDS"); do
        for log in warn default; do
            rm -f "$WORK"/l.db*
            arg=memory
            [ "$store" = sqlite ] && arg="sqlite:$WORK/l.db"
            echo "== $store, round $round, $log" >&2
            SERVER_LOG=$log start "$store-$log" target/release/chatbot-api --store "$arg" --port "$PORT"
            R[$store/$log/post/$round]=$(load 32 benches/post.lua /)
            populate h100 100
            curl -s -o /dev/null "127.0.0.1:$PORT/chat/history/h100"
            R[$store/$log/get/$round]=$(load 32 "" /chat/history/h100)
            stop
        done
    done
done

echo
echo "### The default log against RUST_LOG=warn: 32 connections, $ROUNDS rounds of A/B"
echo
echo "| store | request | warn (median req/s) | default log (median req/s) | default / warn | rounds |"
echo "|---|---|---|---|---|---|"
for store in memory sqlite; do
    for what in post get; do
        warn=$(for r in $(seq "$ROUNDS"); do cut -d' ' -f1 <<<"${R[$store/warn/$what/$r]}"; done | median)
        info=$(for r in $(seq "$ROUNDS"); do cut -d' ' -f1 <<<"${R[$store/default/$what/$r]}"; done | median)
        rounds=$(for r in $(seq "$ROUNDS"); do
            ratio "$(cut -d' ' -f1 <<<"${R[$store/default/$what/$r]}")" "$(cut -d' ' -f1 <<<"${R[$store/warn/$what/$r]}")"; echo -n " "; done)
        label="POST /chat"
        [ "$what" = get ] && label="GET 100 exchanges"
        echo "| $store | $label | $warn | $info | $(ratio "$info" "$warn") | $rounds|"
    done
done
echo
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ' + uncommitted'); machine: $(nproc) cores; duration per run: $DURATION; the log goes to a file (stderr redirected), as under systemd or docker"

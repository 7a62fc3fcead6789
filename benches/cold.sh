#!/usr/bin/env bash
# Cold against warm SQLite reads (#12's target: a session not yet in RAM read
# within 3x of a warm one, 100 exchanges): 1,000 sessions of 100 exchanges
# read in turn, once with the sessions in the cache (warm) and once with a
# 1 MiB cache (every read goes to the file). The working tree against the
# same server built from BASE_REV (default: HEAD, so an uncommitted change is
# measured against what it changes), alternating, on one copy of one file.
#
# Each server reads a file it filled itself (the same requests), so a
# BASE_REV with an older file format is measured on its own format.
#
#   benches/cold.sh                     # ~4 minutes plus one release build of BASE_REV
#   BASE_REV=<commit> ROUNDS=5 DURATION=10s benches/cold.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
PORT=${PORT:-18094}
PG_URL=${CHATBOT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
BASE_REV=${BASE_REV:-HEAD}
ROUNDS=${ROUNDS:-3}
source benches/lib.sh

BASE_BINARY=$(base_binary "$BASE_REV" "${BASE_TREE:-$PWD/target/cold-base}")

fill_each_format

declare -A R
for round in $(seq "$ROUNDS"); do
    for which in base new; do
        binary=target/release/chatbot-api
        [ "$which" = base ] && binary=$BASE_BINARY
        for cache in warm cold; do
            rm -f "$WORK"/run.db*
            cp "$WORK/filled-$which.db" "$WORK/run.db"
            mb=256
            [ "$cache" = cold ] && mb=1
            echo "== round $round, $which, $cache" >&2
            start "$which-$cache" "$binary" --store "sqlite:$WORK/run.db" --port "$PORT" --cache-mb "$mb"
            # A first pass: warm puts every session in RAM; cold warms the OS page cache only.
            SESSIONS=1000 taskset -c 1 wrk -t1 -c1 -d2s -s benches/get_many.lua "http://127.0.0.1:$PORT" >/dev/null
            R[$which/$cache/$round]=$(SESSIONS=1000 load 32 benches/get_many.lua /)
            stop
        done
    done
done

echo
echo "### Cold against warm SQLite reads: 100 exchanges, 1,000 sessions in turn, 32 connections, $ROUNDS rounds"
echo
echo "| server | warm (median req/s) | cold (median req/s) | warm / cold | cold p50 / p99 (µs) | rounds (warm / cold) |"
echo "|---|---|---|---|---|---|"
for which in base new; do
    warm=$(col "$which/warm" 1)
    cold=$(col "$which/cold" 1)
    rounds=$(for r in $(seq "$ROUNDS"); do
        ratio "$(cut -d' ' -f1 <<<"${R[$which/warm/$r]}")" "$(cut -d' ' -f1 <<<"${R[$which/cold/$r]}")"; echo -n " "; done)
    echo "| $which | $warm | $cold | $(ratio "$warm" "$cold") | $(col "$which/cold" 2) / $(col "$which/cold" 3) | $rounds|"
done
echo
echo "base: $(git rev-parse --short "$BASE_REV"); new: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ' + uncommitted'); machine: $(nproc) cores; duration per run: $DURATION"

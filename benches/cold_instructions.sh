#!/usr/bin/env bash
# Instructions a cold SQLite read of 100 exchanges costs, counted by
# callgrind (repeatable on this noisy machine, where requests per second
# move ±15% between runs): 1,000 sessions of 100 exchanges read in turn
# with a 1 MiB cache (every read goes to the file), one connection. The
# whole process is counted, once with no reads and once with N reads; the
# difference over N is the cost of one read, user space only (the kernel's
# share, the TCP and the wake-ups, is not counted). The working tree against
# the same server built from BASE_REV (default: HEAD). Needs valgrind.
#
#   benches/cold_instructions.sh                    # ~4 minutes plus one release build of BASE_REV
#   BASE_REV=<commit> N=4000 benches/cold_instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
PORT=${PORT:-18095}
PG_URL=${CHATBOT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
BASE_REV=${BASE_REV:-HEAD}
N=${N:-2000}
source benches/lib.sh
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 1; }

BASE_BINARY=$(base_binary "$BASE_REV" "${BASE_TREE:-$PWD/target/cold-base}")

fill_each_format

counted() { # binary, which file, reads -> instructions of the whole process
    rm -f "$WORK"/run.db*
    cp "$WORK/filled-$2.db" "$WORK/run.db"
    BENCH_PORT=$PORT RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
        "$1" --store "sqlite:$WORK/run.db" --port "$PORT" --cache-mb 1 2>"$WORK/valgrind.log" &
    PID=$!
    for _ in $(seq 600); do curl -s -o /dev/null "127.0.0.1:$PORT/" && break; sleep 0.1; done
    # One keep-alive connection, sessions in turn as get_many.lua reads them
    # (wrk would wait out its whole -d after the last answer).
    python3 - "$PORT" "$3" <<'PY'
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for n in range(1, int(sys.argv[2]) + 1):
    conn.request("GET", f"/chat/history/bench-{n % 1000}")
    response = conn.getresponse()
    assert response.status == 200, response.status
    response.read()
PY
    stop
    awk '/^(summary|totals):/ { print $2; exit }' "$WORK/callgrind.out"
}

echo
echo "### Instructions per cold SQLite read (100 exchanges, callgrind, user space, $N reads)"
echo
echo "| server | instructions per read |"
echo "|---|---|"
for which in base new; do
    binary=target/release/chatbot-api
    [ "$which" = base ] && binary=$BASE_BINARY
    echo "== $which" >&2
    idle=$(counted "$binary" "$which" 0)
    busy=$(counted "$binary" "$which" "$N")
    echo "| $which | $(( (busy - idle) / N )) |"
done
echo
echo "base: $(git rev-parse --short "$BASE_REV"); new: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ' + uncommitted')"

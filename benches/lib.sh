# Shared by the benchmark scripts: build, start and stop a server pinned to
# core 0, load it with wrk pinned to core 1, fill histories, read RSS.
# Expects DURATION, PORT and PG_URL set by the caller.

for tool in wrk taskset curl; do command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install wrk util-linux curl)"; exit 1; }; done
cargo build --release --quiet --bin chatbot-api --benches
declare -A BIN
while read -r name path; do BIN[$name]=$path; done < <(
    cargo bench --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bench"]:
        print(m["target"]["name"], m["executable"])')
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; psql "$PG_URL" -qAtc 'DROP SCHEMA IF EXISTS chatbot_bench CASCADE' >/dev/null 2>&1 || true; }
trap cleanup EXIT

start() { # name, then the command; SERVER_LOG=default leaves RUST_LOG unset (info)
    local name=$1; shift
    if [ "${SERVER_LOG:-}" = default ]; then
        BENCH_PORT=$PORT env -u RUST_LOG taskset -c 0 "$@" 2>"$WORK/$name.log" &
    else
        BENCH_PORT=$PORT RUST_LOG=warn,chatbot_api::domain::store=info taskset -c 0 "$@" 2>"$WORK/$name.log" &
    fi
    PID=$!
    for _ in $(seq 200); do curl -s -o /dev/null "127.0.0.1:$PORT/" && return; sleep 0.05; done
    echo "$name did not start" >&2; exit 1
}
stop() { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; PID=""; }
rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$PID/status"; }
load() { # connections, script-or-empty, path -> "rps p50 p99"
    local c=$1 script=$2 path=$3 threads=1
    [ "$c" -ge 64 ] && threads=2
    local args=(-t"$threads" -c"$c" -d"$DURATION" --timeout 10s)
    if [ -n "$script" ]; then args+=(-s "$script"); else args+=(-s benches/report.lua); fi
    taskset -c 1 wrk "${args[@]}" "http://127.0.0.1:$PORT$path" | awk '/^RESULT/ {
        split($2,a,"="); split($3,b,"="); split($4,c,"="); print a[2], b[2], c[2] }'
}
populate() { # session ("" = SESSIONS sessions, default 1,000), count, path
    # wrk's main thread sleeps for all of -d, so fill in one-second chunks.
    local left=$2 conns=8 answered
    [ "$2" -le 100 ] && conns=1
    [ "$2" -ge 100000 ] && conns=64
    while [ "$left" -gt 0 ]; do
        answered=$(SESSION=$1 COUNT=$left POST_PATH=${3:-/chat} taskset -c 1 \
            wrk -t1 -c"$conns" -d1s -s benches/populate.lua "http://127.0.0.1:$PORT" | awk '/requests in/ { print $1 }')
        left=$((left - ${answered:-0}))
    done
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }'; }
rps() { cut -d' ' -f1 <<<"${R[$1]:-0 0 0}"; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
base_binary() { # revision, work tree -> path of chatbot-api built from that revision (kept between runs)
    local rev=$1 tree=$2
    if [ ! -x "$tree/target/release/chatbot-api" ] || [ "$(git -C "$tree" rev-parse HEAD 2>/dev/null)" != "$(git rev-parse "$rev")" ]; then
        rm -rf "$tree"
        git worktree prune
        git worktree add --detach "$tree" "$rev" >/dev/null
        (cd "$tree" && cargo build --release --quiet --bin chatbot-api)
    fi
    echo "$tree/target/release/chatbot-api"
}
col() { # key prefix, field (1 rps, 2 p50, 3 p99) -> the median over ROUNDS rounds of R[prefix/round]
    for r in $(seq "$ROUNDS"); do cut -d' ' -f"$2" <<<"${R[$1/$r]}"; done | median
}
ab_row() { # server, workload key, label -> one row of an A/B table against memory in the same rounds
    local which=$1 what=$2 label=$3 rounds
    rounds=$(for r in $(seq "$ROUNDS"); do
        ratio "$(cut -d' ' -f1 <<<"${R[$which/$what/$r]}")" "$(cut -d' ' -f1 <<<"${R[memory/$what/$r]}")"; echo -n " "; done)
    echo "| $which | $label | $(col "$which/$what" 1) | $(col "$which/$what" 2) / $(col "$which/$what" 3) | $(ratio "$(col "$which/$what" 1)" "$(col "memory/$what" 1)") | $rounds|"
}
fill_each_format() { # base and new each fill $WORK/filled-<which>.db: 1,000 sessions of 100 exchanges
    # (each reads a file of its own format; the same requests fill both).
    local which binary
    for which in base new; do
        binary=target/release/chatbot-api
        [ "$which" = base ] && binary=$BASE_BINARY
        echo "== $which fills its file: 1,000 sessions of 100 exchanges" >&2
        start "fill-$which" "$binary" --store "sqlite:$WORK/filled-$which.db" --port "$PORT"
        populate "" 100000
        stop
    done
}

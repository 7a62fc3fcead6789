#!/usr/bin/env bash
# Several instances behind HAProxy on one PostgreSQL and one Redis (docs/DEPLOYING.md):
# the fleet-wide rate limit against one instance alone, cached reads on an instance
# that did not write the session (against memory mode, and PostgreSQL transactions
# per read), and what --redis-url and the default log cost a write.
#
#   benches/fleet.sh                          # ~2.5 minutes
#   BIN=/tmp/chatbot-api DURATION=10s benches/fleet.sh
#
# Builds nothing: it runs BIN (default target/release/chatbot-api, copied first).
# Sets up everything on loopback ports of its own and removes it at the end: a
# PostgreSQL cluster (initdb as the postgres user, port PG_PORT=15442), a
# redis-server (REDIS_PORT=16389), chatbot-api instances (PORT_BASE=18400 and up),
# and HAProxy with tests/fleet/haproxy.cfg.in. Never touches 5432 or 6379.
# Without a build that has --redis-url (or with NO_REDIS=1) the Redis rows say n/a.
# Instances are pinned to core 0 and wrk to core 1, as in benches/lib.sh (whose
# helpers are not sourced: it builds when sourced). Needs wrk, haproxy,
# redis-server, curl, taskset, python3 and PostgreSQL 15's binaries; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
PORT_BASE=${PORT_BASE:-18400}
PG_PORT=${PG_PORT:-15442}
REDIS_PORT=${REDIS_PORT:-16389}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
LIMIT_RATE=100
LIMIT_BURST=50

for tool in wrk taskset curl haproxy python3 runuser "$PG_BIN/initdb"; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install wrk util-linux curl haproxy postgresql)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/fleet-bench-XXXXXX)
chmod 755 "$WORK"
cp "${BIN:-target/release/chatbot-api}" "$WORK/chatbot-api"
BIN=$WORK/chatbot-api
REDIS=1
if [ -n "${NO_REDIS:-}" ] || ! "$BIN" --help | grep -q -- --redis-url; then REDIS=""; fi
[ -n "$REDIS" ] && { command -v redis-server >/dev/null || { echo "needs redis-server" >&2; exit 1; }; }

declare -A PIDS
PG_UP=""
cleanup() {
    for name in "${!PIDS[@]}"; do kill "${PIDS[$name]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "$PG_UP" ] && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pgdata" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM HUP

for port in "$PG_PORT" "$REDIS_PORT" "$PORT_BASE" $(seq $((PORT_BASE + 1)) $((PORT_BASE + 13))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is in use" >&2; exit 1; fi
done

echo "== PostgreSQL on :$PG_PORT, $( [ -n "$REDIS" ] && echo "Redis on :$REDIS_PORT" || echo "no Redis build: Redis rows n/a")" >&2
chown postgres: "$WORK"
mkdir "$WORK/pgsock" && chown postgres: "$WORK/pgsock"
runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pgdata" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
cat >>"$WORK/pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK/pgsock'
max_connections = 200
EOF
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/pg.log" -w start >/dev/null
PG_UP=1
psql_q() { runuser -u postgres -- "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAtc "$1"; }
psql_q "CREATE DATABASE fleet"
PG_URL=postgres://postgres@127.0.0.1:$PG_PORT/fleet
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/
if [ -n "$REDIS" ]; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    PIDS[redis]=$!
    for _ in $(seq 100); do [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
fi

# HAProxy: the service on PORT_BASE (i1-i3 on PORT_BASE+1..3), the limited set on
# PORT_BASE+10 (l1-l3 on +11..13), stats on +9. Instances come and go per row.
FLEET_PORT=$PORT_BASE LIMITED_PORT=$((PORT_BASE + 10)) STATS_PORT=$((PORT_BASE + 9))
python3 - "$WORK/haproxy.cfg" <<PY
import string, sys
servers = lambda names, first: "\n".join(f"    server {n} 127.0.0.1:{first + k}" for k, n in enumerate(names))
text = string.Template(open("tests/fleet/haproxy.cfg.in").read()).substitute(
    FLEET_PORT=$FLEET_PORT, LIMITED_PORT=$LIMITED_PORT, STATS_PORT=$STATS_PORT,
    FLEET_SERVERS=servers(["i1", "i2", "i3"], $PORT_BASE + 1),
    LIMITED_SERVERS=servers(["l1", "l2", "l3"], $PORT_BASE + 11))
open(sys.argv[1], "w").write(text)
PY
haproxy -c -q -f "$WORK/haproxy.cfg"
haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
PIDS[haproxy]=$!

port_of() { case $1 in i*) echo $((PORT_BASE + ${1#i}));; l*) echo $((PORT_BASE + 10 + ${1#l}));; m*) echo $((PORT_BASE + 5));; esac; }
start() { # name, then flags after the binary; SERVER_LOG=default leaves RUST_LOG unset (info); SERVER_BIN overrides BIN
    local name=$1 port bin=${SERVER_BIN:-$BIN}; shift
    port=$(port_of "$name")
    if [ "${SERVER_LOG:-}" = default ]; then
        env -u RUST_LOG taskset -c 0 "$bin" --port "$port" "$@" >>"$WORK/$name.log" 2>&1 &
    else
        RUST_LOG=warn taskset -c 0 "$bin" --port "$port" "$@" >>"$WORK/$name.log" 2>&1 &
    fi
    PIDS[$name]=$!
    for _ in $(seq 300); do curl -s -o /dev/null "127.0.0.1:$port/health" && return; sleep 0.05; done
    echo "$name did not start:" >&2; tail "$WORK/$name.log" >&2; exit 1
}
stop() { local name; for name in "$@"; do kill -TERM "${PIDS[$name]}" 2>/dev/null; wait "${PIDS[$name]}" 2>/dev/null || true; unset "PIDS[$name]"; done; }
wait_up() { # server names: until HAProxy's checks mark each UP
    local name
    for name in "$@"; do
        for _ in $(seq 100); do
            curl -s "127.0.0.1:$STATS_PORT/stats;csv" | awk -F, -v n="$name" '$2 == n && $18 == "UP" { found = 1 } END { exit !found }' && break
            sleep 0.1
        done
    done
}
wrk_at() { # port, connections, script-or-empty, path -> "rps p50 p99 requests non2xx"
    local port=$1 c=$2 script=${3:-benches/report.lua} path=$4
    taskset -c 1 wrk -t1 -c"$c" -d"$DURATION" --timeout 10s -s "$script" "http://127.0.0.1:$port$path" >"$WORK/wrk.out"
    awk '/^RESULT/ { split($2,a,"="); split($3,b,"="); split($4,c,"=") }
         / requests in / { n = $1 }
         /Non-2xx or 3xx responses:/ { bad = $NF }
         END { print a[2], b[2], c[2], n, bad + 0 }' "$WORK/wrk.out"
}
populate() { # port, session, count: POSTs until COUNT are answered (wrk runs for all of -d: 1 s chunks)
    local left=$3 answered
    while [ "$left" -gt 0 ]; do
        answered=$(SESSION=$2 COUNT=$left taskset -c 1 wrk -t1 -c1 -d1s -s benches/populate.lua "http://127.0.0.1:$1" | awk '/requests in/ { print $1 }')
        left=$((left - ${answered:-0}))
    done
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; }
field() { cut -d' ' -f"$2" <<<"$1"; }
xacts() { # committed transactions of the fleet database, once the counters settle
    local last="" now
    for _ in $(seq 30); do
        now=$(psql_q "SELECT xact_commit FROM pg_stat_database WHERE datname = 'fleet'")
        [ "$now" = "$last" ] && { echo "$now"; return; }
        last=$now
        sleep 0.5
    done
    echo "$last"
}
redis_flag() { [ -n "$REDIS" ] && echo "--redis-url $REDIS_URL"; }

declare -A R

# ---- 1. The fleet-wide limit: passed requests over DURATION, fleet against one instance.
limit_row() { # label, extra flags ("" or --redis-url URL)
    local label=$1 extra=$2 session="limit-$RANDOM$RANDOM" n
    for n in l1 l2 l3; do start "$n" --store "$PG_URL" --rate-limit "$LIMIT_RATE" --rate-limit-burst "$LIMIT_BURST" $extra; done
    wait_up l1 l2 l3
    curl -s -o /dev/null -H 'Content-Type: application/json' \
        -d "{\"user_message\":\"Hello!\",\"user_name\":\"Alice\",\"session_id\":\"$session\"}" "127.0.0.1:$(port_of l1)/chat"
    sleep 1.5  # the bucket full again (burst / rate = 0.5 s)
    local one fleet
    one=$(wrk_at "$(port_of l1)" 2 "" "/chat/history/$session")
    sleep 1.5
    fleet=$(wrk_at "$LIMITED_PORT" 2 "" "/chat/history/$session")
    R[limit/$label]="$(( $(field "$one" 4) - $(field "$one" 5) )) $(( $(field "$fleet" 4) - $(field "$fleet" 5) ))"
    stop l1 l2 l3
}
echo "== fleet-wide limit: $LIMIT_RATE/s, burst $LIMIT_BURST" >&2
if [ -n "$REDIS" ]; then limit_row redis "--redis-url $REDIS_URL"; fi
limit_row local ""

# ---- 2. Cached reads: 100 exchanges written through i1, read on i2 with 32 connections.
echo "== cached reads: memory" >&2
start m1 --store memory
populate "$(port_of m1)" h100 100
curl -s -o /dev/null "127.0.0.1:$(port_of m1)/chat/history/h100"
R[read/memory]="$(wrk_at "$(port_of m1)" 32 "" /chat/history/h100) -"
stop m1
read_row() { # label, extra flags
    local label=$1 extra=$2 session="h100-$RANDOM$RANDOM" before after run
    echo "== cached reads: postgres, $label" >&2
    start i1 --store "$PG_URL" $extra
    populate "$(port_of i1)" "$session" 100
    stop i1  # its connections close, so its counts are in before the first reading
    before=$(xacts)
    start i2 --store "$PG_URL" $extra
    curl -s -o /dev/null "127.0.0.1:$(port_of i2)/chat/history/$session"
    run=$(wrk_at "$(port_of i2)" 32 "" "/chat/history/$session")
    stop i2  # a backend reports its last counts as it exits
    after=$(xacts)
    R[read/$label]="$run $(awk -v d=$((after - before)) -v n="$(field "$run" 4)" 'BEGIN { printf "%.3f", (n > 0 ? d / n : 0) }')"
}
read_row "no Redis" ""
if [ -n "$REDIS" ]; then read_row "with Redis" "--redis-url $REDIS_URL"; fi

# ---- 3. Writes: A/B in AB_ROUNDS rounds on one instance, same database, the order
# alternating (A B, B A, ...) since the tables grow with every run.
# One run first, not counted: the first run on an empty database is the fastest.
# BASE=path/to/another/chatbot-api adds a row: that binary against BIN, both with Redis.
AB_ROUNDS=${AB_ROUNDS:-4}
ab() { # key, label A, flags A, log A, label B, flags B, log B; A_BIN, B_BIN: binaries
    local key=$1 r side
    start i1 --store "$PG_URL"
    wrk_at "$(port_of i1)" 32 benches/post.lua /chat >/dev/null
    stop i1
    for r in $(seq 1 "$AB_ROUNDS"); do
        for side in $( ((r % 2)) && echo "a b" || echo "b a"); do
            if [ "$side" = a ]; then SERVER_BIN=${A_BIN:-} SERVER_LOG=$4 start i1 --store "$PG_URL" $3
            else SERVER_BIN=${B_BIN:-} SERVER_LOG=$7 start i1 --store "$PG_URL" $6; fi
            R[$key/$side/$r]=$(wrk_at "$(port_of i1)" 32 benches/post.lua /chat)
            stop i1
        done
    done
}
if [ -n "$REDIS" ]; then
    echo "== writes: without --redis-url against with it" >&2
    ab redis "" "" warn "" "--redis-url $REDIS_URL" warn
fi
echo "== writes: RUST_LOG=warn against the default log" >&2
ab log "" "$(redis_flag)" warn "" "$(redis_flag)" default
if [ -n "${BASE:-}" ] && [ -n "$REDIS" ]; then
    cp "$BASE" "$WORK/base"
    echo "== writes: BASE against BIN, both with --redis-url" >&2
    A_BIN=$WORK/base ab base "" "--redis-url $REDIS_URL" warn "" "--redis-url $REDIS_URL" warn
fi

# ---- The tables.
echo
echo "### Fleet-wide rate limit: $LIMIT_RATE/s, burst $LIMIT_BURST, GET through HAProxy for $DURATION (wrk -c2)"
echo
echo "| instances | one instance alone (passed) | fleet of 3 behind HAProxy (passed) | fleet / one |"
echo "|---|---|---|---|"
if [ -n "$REDIS" ]; then
    read -r one fleet <<<"${R[limit/redis]}"
    echo "| with --redis-url | $one | $fleet | $(ratio "$fleet" "$one") |"
else
    echo "| with --redis-url | n/a | n/a | n/a |"
fi
read -r one fleet <<<"${R[limit/local]}"
echo "| without (each instance limits alone) | $one | $fleet | $(ratio "$fleet" "$one") |"
echo
echo "Target: 1.0× with Redis (±10%); without it a fleet of 3 passes about 3×."
echo
echo "### Cached reads: GET of 100 exchanges, 32 connections, on an instance that did not write them"
echo
echo "| store | requests/s | p50 | p99 | vs memory | PostgreSQL transactions per read |"
echo "|---|---|---|---|---|---|"
memory_rps=$(field "${R[read/memory]}" 1)
for label in memory "no Redis" "with Redis"; do
    v=${R[read/$label]:-}
    name="postgres, $label"
    [ "$label" = memory ] && name=memory
    if [ -z "$v" ]; then echo "| $name | n/a | n/a | n/a | n/a | n/a |"; continue; fi
    read -r rps p50 p99 _ _ per <<<"$v"
    echo "| $name | $rps | $p50 µs | $p99 µs | $(ratio "$rps" "$memory_rps") | $per |"
done
echo
echo "Targets with Redis: ≥ 0.8× memory, ≤ 0.05 transactions per read."
echo
echo "### Writes: POST /chat, 32 connections, one instance on PostgreSQL, $AB_ROUNDS rounds of A/B (order alternating)"
echo
echo "| A | B | A (req/s, rounds) | B (req/s, rounds) | B / A: median of rounds (rounds) |"
echo "|---|---|---|---|---|"
ab_line() { # key, label A, label B
    local key=$1 r a b as="" bs="" ratios=""
    if [ -z "${R[$key/a/1]:-}" ]; then echo "| $2 | $3 | n/a | n/a | n/a |"; return; fi
    for r in $(seq 1 "$AB_ROUNDS"); do
        a=$(field "${R[$key/a/$r]}" 1) b=$(field "${R[$key/b/$r]}" 1)
        as="$as${as:+, }$a" bs="$bs${bs:+, }$b" ratios="$ratios${ratios:+ }$(ratio "$b" "$a")"
    done
    median=$(tr ' ' '\n' <<<"${ratios//×/}" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f×", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')
    echo "| $2 | $3 | $as | $bs | $median ($ratios) |"
}
ab_line redis "no --redis-url" "--redis-url"
ab_line log "RUST_LOG=warn$( [ -n "$REDIS" ] && echo ", --redis-url")" "default log (info)$( [ -n "$REDIS" ] && echo ", --redis-url")"
[ -n "${BASE:-}" ] && [ -n "$REDIS" ] && ab_line base "BASE, --redis-url" "BIN, --redis-url"
echo
echo "Target: ≥ 0.9× for each B / A."
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); duration per run: $DURATION; binary: $( [ -n "$REDIS" ] && echo "with --redis-url" || echo "without --redis-url")"

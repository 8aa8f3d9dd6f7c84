#!/bin/sh
# bench_daemon.sh — deltallmd throughput: one client alone, then 8 concurrent clients, each
# asking for 64 tokens greedily (temperature 0) over HTTP with curl. Prints single-client
# tokens/s, the 8-client aggregate tokens/s and their ratio. Tokens are counted from each
# response's usage.completion_tokens (a client that hits end-of-sequence early counts less).
#   usage: tests/bench_daemon.sh BUILD MODEL.gguf [THREADS] [CLIENTS] [TOKENS]
set -eu
build=${1:?usage: bench_daemon.sh BUILD MODEL [THREADS] [CLIENTS] [TOKENS]}
model=${2:?usage: bench_daemon.sh BUILD MODEL [THREADS] [CLIENTS] [TOKENS]}
threads=${3:-2}
clients=${4:-8}
ntok=${5:-64}
daemon="$build/deltallmd"
[ -x "$daemon" ] || { echo "bench_daemon: $daemon not built" >&2; exit 1; }
[ -f "$model" ] || { echo "bench_daemon: no model $model" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench_daemon: curl is needed" >&2; exit 1; }

tmp=$(mktemp -d /tmp/bench_daemon.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }

# --port 0: the daemon picks a free port and logs it in its "ready" line.
"$daemon" --model "$model" --host 127.0.0.1 --port 0 --threads "$threads" \
    --parallel "$clients" --ctx 512 --log-level info >"$tmp/log" 2>&1 &
pid=$!
port=""
deadline=$(( $(date +%s) + 300 ))
while [ -z "$port" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "bench_daemon: daemon exited:" >&2; cat "$tmp/log" >&2; exit 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { echo "bench_daemon: daemon not ready" >&2; exit 1; }
    port=$(sed -n 's/.*ready: serving .* on [^ ]*:\([0-9][0-9]*\).*/\1/p' "$tmp/log" | head -n 1)
    [ -n "$port" ] || sleep 0.2
done
url="http://127.0.0.1:$port/v1/completions"

# request N -> writes $tmp/out.N; prompts differ so that no client reuses another's cache
request() {
    curl -sS --max-time 600 -o "$tmp/out.$1" -H 'Content-Type: application/json' \
        -d "{\"prompt\":\"Story $1: once upon a time there was\",\"max_tokens\":$ntok,\"temperature\":0}" \
        "$url"
}
tokens() {
    total=0
    for f in "$@"; do
        n=$(grep -o '"completion_tokens":[0-9]*' "$f" | head -n 1 | cut -d: -f2)
        [ -n "$n" ] || { echo "bench_daemon: bad response in $f: $(head -c 300 "$f")" >&2; exit 1; }
        total=$((total + n))
    done
    echo "$total"
}

request warmup
t0=$(now); request 0; t1=$(now)
single_tok=$(tokens "$tmp/out.0")

t2=$(now)
i=1
pids=""
while [ "$i" -le "$clients" ]; do request "$i" & pids="$pids $!"; i=$((i + 1)); done
wait_ok=0
for j in $pids; do wait "$j" || wait_ok=1; done
t3=$(now)
[ "$wait_ok" -eq 0 ] || { echo "bench_daemon: a client failed" >&2; exit 1; }
files=""
i=1
while [ "$i" -le "$clients" ]; do files="$files $tmp/out.$i"; i=$((i + 1)); done
# shellcheck disable=SC2086
multi_tok=$(tokens $files)

awk -v m="$(basename "$model")" -v th="$threads" -v c="$clients" -v n="$ntok" \
    -v st="$single_tok" -v s0="$t0" -v s1="$t1" -v mt="$multi_tok" -v m0="$t2" -v m1="$t3" 'BEGIN {
    s = st / (s1 - s0); a = mt / (m1 - m0);
    printf "deltallmd %s, %d threads, %d tokens per request\n", m, th, n;
    printf "  1 client:  %d tokens in %.2f s = %.1f tokens/s\n", st, s1 - s0, s;
    printf "  %d clients: %d tokens in %.2f s = %.1f tokens/s aggregate\n", c, mt, m1 - m0, a;
    printf "  ratio %d-client / 1-client: %.2fx\n", c, a / s;
}'

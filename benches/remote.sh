#!/usr/bin/env bash
# Build from a warm remote cache into an empty local cache, side by side with a cold local
# build of the same spec, in the same run. Prints both times and their ratio.
# Usage (as root when the spec has chroot steps):
#   benches/remote.sh SPEC [REMOTE_URL] [path/to/imgspec]
# With no REMOTE_URL (or ""), a throw-away nginx with WebDAV PUT is started on loopback.
# Credentials, if the remote needs them: IMGSPEC_REMOTE_USER/PASSWORD or IMGSPEC_REMOTE_TOKEN.
set -euo pipefail
spec=${1:?usage: benches/remote.sh SPEC [REMOTE_URL] [path/to/imgspec]}
url=${2:-}
imgspec=${3:-$(cd "$(dirname "$0")/.." && pwd)/target/release/imgspec}
work=$(mktemp -d)
nginx_pid=
cleanup() { [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "$1 failed; its log:" >&2; tail -n 20 "$2" >&2; exit 1; }

if [ -z "$url" ]; then
    command -v nginx >/dev/null || { echo "no REMOTE_URL and no nginx (apt-get install nginx)" >&2; exit 1; }
    port=$((20000 + RANDOM % 40000))
    mkdir -p "$work/nginx/root" "$work/nginx/body"
    cat >"$work/nginx/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1;
pid $work/nginx/nginx.pid; error_log $work/nginx/error.log;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/body; fastcgi_temp_path $work/nginx/body;
    uwsgi_temp_path $work/nginx/body; scgi_temp_path $work/nginx/body;
    server {
        listen 127.0.0.1:$port; root $work/nginx/root; client_max_body_size 0;
        location / { dav_methods PUT; create_full_put_path on; }
    }
}
CONF
    nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
    nginx_pid=$!
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    url="http://127.0.0.1:$port/imgspec"
fi

now() { date +%s.%N; }
# 1. Cold: an empty local cache, no remote.
t0=$(now)
"$imgspec" --cache-dir "$work/cold" build "$spec" --out-dir "$work/out-cold" >"$work/cold.log" 2>&1 || fail "cold build" "$work/cold.log"
t1=$(now)
# 2. Warm the remote from that cache (CI's job; not part of either figure).
"$imgspec" --cache-dir "$work/cold" --remote "$url" cache push "$spec" >"$work/push.log" 2>&1 || fail "cache push" "$work/push.log"
t2=$(now)
# 3. An empty local cache and the warm remote.
"$imgspec" --cache-dir "$work/warm" --remote "$url" build "$spec" --out-dir "$work/out-warm" >"$work/warm.log" 2>&1 || fail "warm-remote build" "$work/warm.log"
t3=$(now)
(cd "$work/out-cold" && cat */SHA256SUMS) >"$work/cold.sums"
(cd "$work/out-warm" && cat */SHA256SUMS) >"$work/warm.sums"
cmp -s "$work/cold.sums" "$work/warm.sums" || { echo "the outputs differ!" >&2; diff "$work/cold.sums" "$work/warm.sums" >&2; exit 1; }
awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" 'BEGIN {
    cold = b - a; push = c - b; warm = d - c;
    printf "cold local build:                 %7.2f s\n", cold;
    printf "cache push (warming the remote):  %7.2f s\n", push;
    printf "empty local cache, warm remote:   %7.2f s\n", warm;
    printf "speed-up:                         %7.1f x\n", cold / warm }'
grep -h 'steps built' "$work/cold.log" "$work/warm.log" | sed 's/^/  /'
grep -h 'pushed' "$work/push.log" | sed 's/^/  /'
echo "  outputs identical (SHA256SUMS)"

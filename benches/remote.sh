#!/usr/bin/env bash
# A cold build beside builds into an empty local cache from a warm remote cache, side by side in
# one run: from a three-node Garage cluster (S3, replication factor 3) and from nginx (WebDAV
# PUT), both started here on loopback with their own throw-away folders. Prints a table of the
# times and their ratios, and checks that every build gave the same bytes.
# Usage (as root when the spec has chroot steps, after `cargo build --release`):
#   benches/remote.sh [SPEC] [path/to/imgspec]        # SPEC: specs/debian-efi.kdl by default
# Needs nginx and garage (scripts/install-deps installs both; garage in ~/.cargo/bin).
# SKIP_GARAGE=1 or SKIP_NGINX=1 leave one of them out.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
spec=${1:-$root/specs/debian-efi.kdl}
imgspec=${2:-$root/target/release/imgspec}
[ -x "$imgspec" ] || { echo "no $imgspec (cargo build --release)" >&2; exit 1; }
# Inside /var/tmp, not a mode-0700 mktemp folder of /tmp: nginx's worker reads the files.
work=$(mktemp -d /var/tmp/imgspec-bench-remote.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "$1 failed; its log:" >&2; tail -n 30 "$2" >&2; exit 1; }
port() { # a free loopback port
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}
wait_port() {
    for _ in $(seq 600); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "nothing listens on port $1" >&2; return 1
}
# Every imgspec below: no remote, config file or credentials from the caller.
export XDG_CONFIG_HOME=$work/config
unset IMGSPEC_REMOTE IMGSPEC_REMOTE_TOKEN IMGSPEC_REMOTE_USER IMGSPEC_REMOTE_PASSWORD
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL

nginx_url=
if [ -z "${SKIP_NGINX:-}" ]; then
    command -v nginx >/dev/null || { echo "no nginx (apt-get install nginx)" >&2; exit 1; }
    p=$(port)
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
        listen 127.0.0.1:$p; root $work/nginx/root; client_max_body_size 0;
        location / { dav_methods PUT; create_full_put_path on; }
    }
}
CONF
    nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
    pids+=($!)
    wait_port "$p"
    nginx_url="http://127.0.0.1:$p/imgspec"
fi

s3_url=
if [ -z "${SKIP_GARAGE:-}" ]; then
    garage=$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")
    [ -x "$garage" ] || { echo "no garage (scripts/install-deps builds it)" >&2; exit 1; }
    secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    for n in 0 1 2; do
        d=$work/garage/node$n
        mkdir -p "$d/meta" "$d/data"
        rpc=$(port); s3=$(port); admin=$(port)
        cat >"$d/garage.toml" <<CONF
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
CONF
        echo "$s3" >"$d/s3-port"
        echo "$rpc" >"$d/rpc-port"
        RUST_LOG=garage=warn "$garage" -c "$d/garage.toml" server >"$d/server.log" 2>&1 &
        pids+=($!)
    done
    g() { "$garage" -c "$work/garage/node0/garage.toml" "$@"; }
    ids=()
    for n in 0 1 2; do
        d=$work/garage/node$n
        wait_port "$(cat "$d/rpc-port")"; wait_port "$(cat "$d/s3-port")"
        id=
        for _ in $(seq 300); do
            id=$("$garage" -c "$d/garage.toml" node id -q 2>/dev/null) && break
            sleep 0.2
        done
        [ -n "$id" ] || { echo "garage node $n did not start" >&2; cat "$d/server.log" >&2; exit 1; }
        ids+=("$id")
    done
    for id in "${ids[@]:1}"; do
        for _ in $(seq 150); do g node connect "$id" >/dev/null 2>&1 && break; sleep 0.2; done
    done
    for id in "${ids[@]}"; do g layout assign -z dc1 -c 20G "${id:0:16}" >/dev/null; done
    g layout apply --version 1 >/dev/null
    g bucket create imgspec >/dev/null
    key=$(g key create imgspec-bench)
    field() { awk -F': *' -v want="$1" 'tolower($1) ~ want { print $2; exit }' <<<"$key"; }
    export AWS_ACCESS_KEY_ID=$(field 'key id|key_id')
    export AWS_SECRET_ACCESS_KEY=$(field 'secret')
    g bucket allow --read --write --owner imgspec --key imgspec-bench >/dev/null
    s3_endpoint="http://127.0.0.1:$(cat "$work/garage/node0/s3-port")"
    s3_url="s3://imgspec/bench"
    mkdir -p "$XDG_CONFIG_HOME/imgspec"
fi
# The S3 remote's endpoint lives in the config file; the nginx one is given with --remote.
s3_config() {
    if [ -n "$s3_url" ]; then
        printf 'remote "%s" endpoint="%s" region="garage"\n' "$s3_url" "$s3_endpoint" \
            >"$XDG_CONFIG_HOME/imgspec/config.kdl"
    fi
}
no_config() { rm -f "$XDG_CONFIG_HOME/imgspec/config.kdl"; }

now() { date +%s.%N; }
timed() { # NAME LOG imgspec-args... ; prints the seconds
    local name=$1 log=$2; shift 2
    local t0 t1
    t0=$(now)
    "$imgspec" "$@" >"$log" 2>&1 || fail "$name" "$log"
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}

echo "spec: $spec; imgspec: $imgspec; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# 1. Cold: an empty local cache, no remote.
no_config
cold=$(timed "cold build" "$work/cold.log" --cache-dir "$work/cache-cold" build "$spec" --out-dir "$work/out-cold")
# 2. Warm the remotes from that cache (CI's job; not part of the figures).
if [ -n "$nginx_url" ]; then
    "$imgspec" --cache-dir "$work/cache-cold" --remote "$nginx_url" cache push "$spec" >"$work/push-nginx.log" 2>&1 \
        || fail "cache push to nginx" "$work/push-nginx.log"
fi
if [ -n "$s3_url" ]; then
    s3_config
    "$imgspec" --cache-dir "$work/cache-cold" cache push "$spec" >"$work/push-s3.log" 2>&1 \
        || fail "cache push to Garage" "$work/push-s3.log"
fi
# 3. An empty local cache and the warm Garage cluster; 4. the same from nginx.
s3=; nginx=
if [ -n "$s3_url" ]; then
    s3_config
    s3=$(timed "build from Garage" "$work/s3.log" --cache-dir "$work/cache-s3" build "$spec" --out-dir "$work/out-s3")
fi
if [ -n "$nginx_url" ]; then
    no_config
    nginx=$(timed "build from nginx" "$work/nginx.log" --cache-dir "$work/cache-nginx" --remote "$nginx_url" build "$spec" --out-dir "$work/out-nginx")
fi

(cd "$work/out-cold" && cat */SHA256SUMS) >"$work/cold.sums"
for r in s3 nginx; do
    [ -d "$work/out-$r" ] || continue
    (cd "$work/out-$r" && cat */SHA256SUMS) >"$work/$r.sums"
    cmp -s "$work/cold.sums" "$work/$r.sums" || { echo "the outputs from $r differ!" >&2; diff "$work/cold.sums" "$work/$r.sums" >&2; exit 1; }
done

awk -v cold="$cold" -v s3="$s3" -v nginx="$nginx" 'BEGIN {
    printf "%-44s %9s %12s %10s\n", "build of the spec", "time", "vs cold", "vs nginx";
    printf "%-44s %8.2fs %12s %10s\n", "cold (empty local cache, no remote)", cold, "1.0x", "";
    if (s3 != "")
        printf "%-44s %8.2fs %11.1fx %10s\n", "empty local cache, warm Garage (S3, 3 nodes)", s3, cold / s3,
            (nginx != "" ? sprintf("%.2fx", s3 / nginx) : "");
    if (nginx != "")
        printf "%-44s %8.2fs %11.1fx %10s\n", "empty local cache, warm nginx (WebDAV)", nginx, cold / nginx, "1.00x";
    if (s3 != "") {
        printf "goal: S3 >= 10x faster than cold: %s", (cold / s3 >= 10 ? "met" : "NOT met");
        if (nginx != "") printf "; S3 within 1.3x of nginx: %s", (s3 / nginx <= 1.3 ? "met" : "NOT met");
        printf "\n";
    }
}'
for f in cold s3 nginx; do
    [ -f "$work/$f.log" ] && grep -h 'steps built' "$work/$f.log" | sed "s/^/  $f: /"
done
grep -h 'pushed' "$work"/push-*.log 2>/dev/null | sed 's/^/  /'
echo "  outputs identical (SHA256SUMS)"

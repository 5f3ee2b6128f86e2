#!/usr/bin/env bash
# Incremental rebuilds of one spec, side by side in one run, on a copy of the spec's folder and
# an empty cache of their own:
#   1. cold build
#   2. no-op rebuild
#   3. rebuild after changing one overlay file (OVERLAY_FILE, relative to the spec's folder)
#   4. rebuild after changing one `run` command (the bench adds `run` to its copy of the spec)
#   5. rebuild after changing the kernel command line (`cmdline=` of the bootloader)
#   6. restore of a deleted output file, next to `cp` of the same file
#   7. (REMOTE=URL only) build on an empty local cache from a warm remote
# Before each change, `imgspec plan` says which steps will be rebuilt and why; after it, the
# build's own per-step seconds are shown.
#
# Usage (as root, after cargo build --release):
#   benches/incremental.sh [SPEC] [path/to/imgspec]
# Environment:
#   OVERLAY_FILE  the file to change (default files/etc/motd, i.e. specs/files/etc/motd)
#   WORK          where to put the copy, cache and outputs (default: a new dir in /var/tmp)
#   REMOTE        URL of a remote cache (nginx with WebDAV PUT, bazel-remote) for step 7: the
#                 bench pushes to it, then builds from it into an empty local cache
set -euo pipefail
cd "$(dirname "$0")/.."
spec_in=${1:-specs/debian-efi.kdl}
imgspec=$(realpath "${2:-${CARGO_TARGET_DIR:-target}/release/imgspec}")
overlay=${OVERLAY_FILE:-files/etc/motd}
[ -x "$imgspec" ] || { echo "no imgspec binary at $imgspec (cargo build --release)" >&2; exit 2; }
[ -f "$spec_in" ] || { echo "no spec at $spec_in" >&2; exit 2; }

work=${WORK:-$(mktemp -d /var/tmp/imgspec-incremental.XXXXXX)}
mkdir -p "$work"
cleanup() { [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
cp -a "$(dirname "$spec_in")" "$work/specs"
spec="$work/specs/$(basename "$spec_in")"
name=$(sed -nE 's/^image "([^"]+)".*/\1/p' "$spec" | head -n1)
[ -n "$name" ] || { echo "$spec_in declares no image" >&2; exit 2; }
[ -f "$work/specs/$overlay" ] || { echo "no overlay file $overlay beside $spec_in (set OVERLAY_FILE)" >&2; exit 2; }
grep -q 'cmdline="' "$spec" || { echo "$spec_in has no bootloader cmdline= to change" >&2; exit 2; }

# The bench's own `run` command: the first step after the spec's own layers (the image body).
python3 - "$spec" "$name" <<'EOF'
import re, sys
path, name = sys.argv[1], sys.argv[2]
s = open(path).read()
m = re.search(r'^image "%s"[^\n]*\{\n' % re.escape(name), s, re.M)
assert m, f"no `image \"{name}\" {{` line in {path}"
s = s[:m.end()] + '    run "echo imgspec-bench 1 >/etc/imgspec-bench"\n' + s[m.end():]
open(path, "w").write(s)
EOF

cache="$work/cache"
out="$work/out"
log="$work/build.log"
results=()

# Runs one build; prints its wall time and the steps it built with their own seconds.
build() {
    local label=$1 a b
    shift
    a=$(date +%s%N)
    if ! "$imgspec" --cache-dir "$cache" build "$spec" --out-dir "$out" "$@" >"$log" 2>&1; then
        echo "$label: build failed; its log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    b=$(date +%s%N)
    local s
    s=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    echo "== $label: ${s} s"
    grep -E '^\[[0-9:]+\] built ' "$log" | sed -E 's/^\[[0-9:]+\] built +/   built  /' || true
    grep -E 'steps built' "$log" | sed 's/^/   /'
    results+=("$(printf '%-40s %8s s' "$label" "$s")")
}

# What `plan` says will be rebuilt, and why.
plan() {
    echo "-- plan:"
    "$imgspec" --cache-dir "$cache" plan "$spec" 2>&1 | grep -vE '  cached' | sed 's/^/   /'
}

echo "imgspec incremental bench: $spec_in with $imgspec"
echo "host: $(nproc) CPUs, $(free -g | awk '/^Mem/ { print $2 }') GiB RAM; work dir $work ($(stat -f -c %T "$work"))"
echo

build "cold build"
noop=()
for _ in 1 2 3; do
    a=$(date +%s%N)
    "$imgspec" --cache-dir "$cache" build "$spec" --out-dir "$out" >/dev/null 2>&1
    b=$(date +%s%N)
    noop+=("$(( (b - a) / 1000000 ))")
done
echo "== no-op rebuild (3 runs): ${noop[*]} ms"
results+=("$(printf '%-40s %8s ms' "no-op rebuild (best of 3)" "$(printf '%s\n' "${noop[@]}" | sort -n | head -n1)")")

echo "imgspec bench $(date +%s%N)" >>"$work/specs/$overlay"
plan
build "one overlay file changed ($overlay)"

sed -i 's|echo imgspec-bench 1 >|echo imgspec-bench 2 >|' "$spec"
plan
build "one run command changed"

sed -i -E '0,/cmdline="/s/cmdline="([^"]*)"/cmdline="\1 quiet"/' "$spec"
plan
build "kernel command line changed"

# Restore each output file (largest first) after deleting it, next to `cp` of the same file.
for big in $(ls -S "$out/$name"/"$name".*); do
    rm -f "$big"
    a=$(date +%s%N)
    "$imgspec" --cache-dir "$cache" build "$spec" --out-dir "$out" >/dev/null 2>&1
    b=$(date +%s%N)
    restore=$(( (b - a) / 1000000 ))
    sync
    a=$(date +%s%N)
    cp "$big" "$work/copy"
    b=$(date +%s%N)
    copy=$(( (b - a) / 1000000 ))
    rm -f "$work/copy"
    size=$(du -h --apparent-size "$big" | cut -f1)
    echo "== restore deleted $(basename "$big") ($size): ${restore} ms; cp of the same file: ${copy} ms"
    results+=("$(printf '%-40s %8s ms' "restore deleted $(basename "$big") ($size)" "$restore")")
    results+=("$(printf '%-40s %8s ms' "  cp of the same file" "$copy")")
done

# ---- 7. Build on an empty local cache from a warm remote (REMOTE=URL) ---------------------
# Pushes what the spec (as last changed) needs from the bench's cache to REMOTE, then times a
# build of it with an empty local cache that fetches every step from REMOTE, and checks that
# its outputs are the same bytes. Not run without REMOTE (benches/remote.sh starts a
# throw-away nginx for the same comparison).
if [ -n "${REMOTE:-}" ]; then
    if ! "$imgspec" --cache-dir "$cache" cache push "$spec" --remote "$REMOTE" >"$log" 2>&1; then
        echo "cache push to the remote failed; its log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    cache="$work/cache-empty" out="$work/out-remote" build "warm remote, empty local cache" --remote "$REMOTE"
    if cmp -s "$work/out/$name/SHA256SUMS" "$work/out-remote/$name/SHA256SUMS"; then
        echo "   outputs identical to the local build's"
    else
        echo "   OUTPUTS DIFFER from the local build's:" >&2
        diff "$work/out/$name/SHA256SUMS" "$work/out-remote/$name/SHA256SUMS" >&2 || true
        exit 1
    fi
fi

echo
echo "summary ($spec_in):"
printf '  %s\n' "${results[@]}"

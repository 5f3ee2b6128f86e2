#!/usr/bin/env bash
# Restoring a deleted output of a spec whose steps are all cached, side by side with a plain
# copy of the same file, N times each, interleaved: delete out/IMAGE/IMAGE.raw (then .qcow2),
# time `imgspec build` writing it back from the cache, and time `cp --sparse=auto` of the
# restored file to a new name. Prints the medians and the ratio to cp, for each way the cache
# gives a file back (its link, a copy of its link, the blob).
#
# Usage (as root, after `cargo build --release`):
#   benches/restore.sh [SPEC] [path/to/imgspec]
#   RESTORE_CACHE=/path/to/cache benches/restore.sh   # a cache that holds the spec's build:
#                                                     # no cold build (~110 s), only read
#   N=7 benches/restore.sh                            # runs of each (default 5)
#
# Fairness: `sync` before every timed command (imgspec and cp alike) so neither pays for the
# other's dirty pages; the page cache is not dropped for either (both read warm data: the blob
# and the file copied). imgspec fsyncs what it restores (out/ is all-or-nothing and durable)
# and cp does not, so a third column times `cp` followed by `sync FILE` (an fsync of the
# copy): the like-for-like figure. Work folder: /var/tmp/imgspec-restore-bench (WORK=…).
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-specs/debian-efi.kdl}
imgspec=$(realpath "${2:-${CARGO_TARGET_DIR:-target}/release/imgspec}")
n=${N:-5}
work=${WORK:-/var/tmp/imgspec-restore-bench}
name=$(basename "$spec" .kdl)
mkdir -p "$work"
if [ -n "${RESTORE_CACHE:-}" ]; then
    cache=$RESTORE_CACHE
else
    cache=$work/cache
fi
out=$work/out
rm -rf "$out" "$work/copy"
log=$work/build.log
build() { "$imgspec" build --cache-dir "$cache" --out-dir "$out" "$spec" >"$log" 2>&1; }
# Wall milliseconds of a command, after a sync; a command that fails stops the script.
ms() {
    local a b
    sync
    a=$(date +%s%N)
    "$@" >/dev/null 2>&1 || {
        echo "failed: $* (see $log)" >&2
        return 1
    }
    b=$(date +%s%N)
    echo $(((b - a) / 1000000))
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : int((v[NR/2]+v[NR/2+1])/2)}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}'; }
cp_sync() { cp --sparse=auto "$1" "$2" && sync "$2"; }

echo "imgspec: $imgspec"
echo "cache:   $cache"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
t=$(ms build)
echo "first build into $out: ${t} ms"
dir=$out/$name
(cd "$dir" && sha256sum --quiet -c SHA256SUMS)
noop=()
for _ in $(seq "$n"); do noop+=("$(ms build)"); done
echo "no-op build: ${noop[*]} ms"

rows=()
# "linked": the cache's hard link to the deleted file gives it back (the usual case);
# "copy": the file was moved away, so the cache's link shares its inode and is copied;
# "blob": without that link (out/ on another filesystem than the cache, or the file written to
# in place since), the restore decompresses and checks the blob.
for how in linked copy blob; do
for ext in raw qcow2; do
    f=$dir/$name.$ext
    [ -f "$f" ] || continue
    restore=()
    copy=()
    copysync=()
    for _ in $(seq "$n"); do
        if [ "$how" = copy ]; then mv "$f" "$work/moved"; else rm -f "$f"; fi
        if [ "$how" = blob ]; then rm -rf "$cache/linked-v1"; fi
        restore+=("$(ms build)")
        rm -f "$work/moved"
        [ -f "$f" ] || { echo "imgspec did not restore $f" >&2; exit 1; }
        copy+=("$(ms cp --sparse=auto "$f" "$work/copy")")
        rm -f "$work/copy"
        copysync+=("$(ms cp_sync "$f" "$work/copy")")
        rm -f "$work/copy"
    done
    # Byte-identical and sparse, every time the same: checked once after the runs.
    (cd "$dir" && sha256sum --quiet -c SHA256SUMS)
    apparent=$(stat -c %s "$f")
    allocated=$(($(stat -c %b "$f") * $(stat -c %B "$f")))
    echo "$ext ($how): $((apparent >> 20)) MiB, $((allocated >> 20)) MiB allocated"
    echo "  imgspec build restoring it: ${restore[*]} ms"
    echo "  cp --sparse=auto:           ${copy[*]} ms"
    echo "  cp --sparse=auto + fsync:   ${copysync[*]} ms"
    r=$(median "${restore[@]}")
    c=$(median "${copy[@]}")
    s=$(median "${copysync[@]}")
    case $how in
    linked) from="its link" ;;
    copy) from="a copy of its link" ;;
    *) from="its blob" ;;
    esac
    rows+=("| $ext ($((apparent >> 20)) MiB, $((allocated >> 20)) MiB data), from $from | $r ms | $c ms | $(ratio "$r" "$c") × | $s ms | $(ratio "$r" "$s") × |")
done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "medians of $n runs; no-op build $(median "${noop[@]}") ms"
echo "| restore | imgspec build | cp | ratio | cp + fsync | ratio |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"

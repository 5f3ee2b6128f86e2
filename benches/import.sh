#!/usr/bin/env bash
# `base "image"` beside libguestfs' own `virt-tar-out` of the same disk, side by side in one
# run, cold (an empty cache each time): imgspec's import (qemu-img's check, inspection, the
# guest's fstab mounted, the tree out with xattrs and imported into the store, generalised) and a
# plain tar of the same tree. Prints each run, the medians and their ratio.
# Usage (as root): benches/import.sh DISK [path/to/imgspec] [RUNS]
#   DISK: any disk of an installed system, e.g. out/debian-efi/debian-efi.qcow2.
# The appliance runs under TCG unless LIBGUESTFS_BACKEND_SETTINGS says otherwise.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
disk=$(realpath "${1:?usage: benches/import.sh DISK [imgspec] [RUNS]}")
imgspec=${2:-$root/target/release/imgspec}
runs=${3:-3}
[ -x "$imgspec" ] || { echo "no $imgspec (cargo build --release)" >&2; exit 1; }
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}
work=$(mktemp -d /var/tmp/imgspec-bench-import.XXXXXX)
trap 'rm -rf "$work"' EXIT
printf 'image "imported" {\n    base "image" path="%s"\n    output "tar"\n}\n' "$disk" > "$work/import.kdl"
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: > "$work/a"; : > "$work/b"
for i in $(seq "$runs"); do
    rm -rf "$work/cache" "$work/out"
    t=$(now)
    IMGSPEC_CACHE_DIR=$work/cache "$imgspec" build "$work/import.kdl" --out-dir "$work/out" \
        > "$work/imgspec.log" 2>&1 || { tail -n 30 "$work/imgspec.log" >&2; exit 1; }
    a=$(awk -v a="$(now)" -v b="$t" 'BEGIN {print a - b}')
    rm -f "$work/plain.tar"
    t=$(now)
    virt-tar-out -a "$disk" / "$work/plain.tar"
    b=$(awk -v a="$(now)" -v b="$t" 'BEGIN {print a - b}')
    echo "$a" >> "$work/a"; echo "$b" >> "$work/b"
    printf 'run %s: imgspec %6.1f s   virt-tar-out %6.1f s\n' "$i" "$a" "$b"
done
a=$(median < "$work/a"); b=$(median < "$work/b")
printf '\n| %s | median |\n|---|---|\n| imgspec import (cold) | %.1f s |\n| virt-tar-out | %.1f s |\n| ratio | %.2f x |\n' \
    "$(basename "$disk")" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN {print a / b}')"

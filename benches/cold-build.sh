#!/usr/bin/env bash
# Cold build of specs/debian-efi.kdl next to its floor: a bare mmdebstrap of the same package
# set from the same mirror, in the same run. Prints both times and their ratio.
# Usage (as root, after scripts/install-deps and cargo build --release):
#   benches/cold-build.sh [path/to/imgspec]
set -euo pipefail
cd "$(dirname "$0")/.."
imgspec=${1:-target/release/imgspec}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "$1 failed; its log:" >&2; tail -n 20 "$2" >&2; exit 1; }
# The spec's packages, plus the GRUB packages the plan adds for the bootloader.
pkgs=$(grep -hE '^\s*packages ' specs/debian-common.kdl specs/debian-efi.kdl | sed -E 's/^\s*packages "[^"]*"//' | xargs)
pkgs="$pkgs grub-common grub-efi-amd64-bin grub-pc-bin grub2-common"
# The host's sources, as imgspec uses them (no mirror is written here).
mapfile -t sources < <(grep -hE '^(URIs|Suites):' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
    | paste - - | awk '{for (i = 4; i <= NF; i++) if ($i !~ /backports/) print "deb " $2 " " $i " main"}')

t0=$(date +%s.%N)
"$imgspec" --cache-dir "$work/cache" build specs/debian-efi.kdl --out-dir "$work/out" >"$work/build.log" 2>&1 || fail imgspec "$work/build.log"
t1=$(date +%s.%N)
SOURCE_DATE_EPOCH=1686355200 mmdebstrap --variant=minbase --mode=root --format=tar \
    --include="${pkgs// /,}" bookworm "$work/floor.tar" "${sources[@]}" </dev/null >"$work/floor.log" 2>&1 || fail mmdebstrap "$work/floor.log"
t2=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {
    build = b - a; floor = c - b;
    printf "cold imgspec build:       %6.1f s\n", build;
    printf "bare mmdebstrap (floor):  %6.1f s\n", floor;
    printf "ratio:                    %6.2f x\n", build / floor }'
grep -E 'built|steps built' "$work/build.log" | sed 's/^/  /'

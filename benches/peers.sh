#!/usr/bin/env bash
# imgspec next to its peers, side by side in one run on one machine, for the UEFI whole-disk
# Debian image (specs/debian-efi.kdl):
#   1. diskimage-builder cold (`debian-minimal vm block-device-efi dhcp-all-interfaces`)
#   2. diskimage-builder again, after the same one-file change (it has no step cache: its
#      rebuild of anything is a whole build; the file is its equivalent of the overlay file)
#   3. imgspec cold (empty cache)
#   4. imgspec after one overlay file changed (specs/files/etc/motd)
#   5. a bare `mmdebstrap --include=` of the same package set from the same mirror: the floor
# and prints a table of times and ratios, imgspec's peak RSS (/usr/bin/time -v) in the cold and
# the incremental build, and the per-step seconds of the incremental build.
#
# diskimage-builder runs through a runner that makes it work on a machine without sudo,
# device-mapper or a vfat driver: give its path as DIB_RUNNER (it takes `efi NAME` and writes
# its own work folder, PEERS_DIR). Without DIB_RUNNER, steps 1 and 2 are skipped.
#
# Usage (as root, after scripts/install-deps and cargo build --release):
#   DIB_RUNNER=/path/to/run-dib.sh benches/peers.sh [path/to/imgspec]
set -euo pipefail
cd "$(dirname "$0")/.."
imgspec=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/imgspec}")
[ -x "$imgspec" ] || { echo "no imgspec binary at $imgspec (cargo build --release)" >&2; exit 2; }
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing (scripts/install-deps)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is missing (apt-get install time)" >&2; exit 2; }

# Not a mktemp -d folder (0700): apt's sandbox user reads below it.
work=${WORK:-/var/tmp/imgspec-peers-bench.$$}
mkdir -p "$work"
chmod 0755 "$work"
cleanup() { [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
cp -a specs "$work/specs"
spec="$work/specs/debian-efi.kdl"
fail() { echo "$1 failed; its log:" >&2; tail -n 30 "$2" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
rss() { awk '/Maximum resident set size/ { printf "%.0f", $NF / 1024 }' "$1"; }

echo "imgspec peers bench: specs/debian-efi.kdl with $imgspec"
echo "host: $(nproc) CPUs, $(free -g | awk '/^Mem/ { print $2 }') GiB RAM; load $(cut -d' ' -f1-3 /proc/loadavg)"

declare -A t
if [ -n "${DIB_RUNNER:-}" ]; then
    a=$(now)
    "$DIB_RUNNER" efi bench-cold >"$work/dib-cold.log" 2>&1 || fail diskimage-builder "$work/dib-cold.log"
    b=$(now)
    t[dib_cold]=$(secs "$a" "$b")
    a=$(now)
    "$DIB_RUNNER" efi bench-again >"$work/dib-again.log" 2>&1 || fail diskimage-builder "$work/dib-again.log"
    b=$(now)
    t[dib_again]=$(secs "$a" "$b")
fi

a=$(now)
/usr/bin/time -v -o "$work/cold.time" "$imgspec" --cache-dir "$work/cache" build "$spec" \
    --out-dir "$work/out" >"$work/cold.log" 2>&1 || fail "imgspec cold build" "$work/cold.log"
b=$(now)
t[cold]=$(secs "$a" "$b")

echo "imgspec bench $(date +%s%N)" >>"$work/specs/files/etc/motd"
a=$(now)
/usr/bin/time -v -o "$work/inc.time" "$imgspec" --cache-dir "$work/cache" build "$spec" \
    --out-dir "$work/out" >"$work/inc.log" 2>&1 || fail "imgspec incremental build" "$work/inc.log"
b=$(now)
t[inc]=$(secs "$a" "$b")

# The spec's packages, plus the GRUB packages the plan adds for the bootloader.
pkgs=$(grep -hE '^\s*packages ' specs/debian-common.kdl specs/debian-efi.kdl | sed -E 's/^\s*packages "[^"]*"//' | xargs)
pkgs="$pkgs grub-common grub-efi-amd64-bin grub-pc-bin grub2-common"
# The host's sources, as imgspec uses them (no mirror is written here).
mapfile -t sources < <(grep -hE '^(URIs|Suites):' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
    | paste - - | awk '{for (i = 4; i <= NF; i++) if ($i !~ /backports/) print "deb " $2 " " $i " main"}')
a=$(now)
SOURCE_DATE_EPOCH=1686355200 mmdebstrap --variant=minbase --mode=root --format=tar \
    --include="${pkgs// /,}" bookworm "$work/floor.tar" "${sources[@]}" </dev/null \
    >"$work/floor.log" 2>&1 || fail mmdebstrap "$work/floor.log"
b=$(now)
t[floor]=$(secs "$a" "$b")

echo
printf '| %-52s | %8s | %12s | %10s |\n' "specs/debian-efi.kdl" "time" "vs mmdebstrap" "vs dib"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..54})" "----------" "--------------" "------------"
row() {
    local label=$1 v=$2 floor dib
    floor=$(awk -v v="$v" -v f="${t[floor]}" 'BEGIN { printf "%.2f ×", v / f }')
    dib=""
    [ -n "${t[dib_cold]:-}" ] && dib=$(awk -v v="$v" -v d="${t[dib_cold]}" 'BEGIN { printf "%.2f ×", v / d }')
    printf '| %-52s | %6s s | %12s | %10s |\n' "$label" "$v" "$floor" "$dib"
}
[ -n "${t[dib_cold]:-}" ] && row "diskimage-builder, cold" "${t[dib_cold]}"
[ -n "${t[dib_again]:-}" ] && row "diskimage-builder, after one file changed (no cache)" "${t[dib_again]}"
row "imgspec, cold" "${t[cold]}"
row "imgspec, one overlay file changed" "${t[inc]}"
row "bare mmdebstrap of the same packages (the floor)" "${t[floor]}"
echo
echo "imgspec peak RSS: cold $(rss "$work/cold.time") MiB, one file changed $(rss "$work/inc.time") MiB"
echo "imgspec cold build, per step:"
grep -E '^\[[0-9:]+\] built ' "$work/cold.log" | sed -E 's/^\[[0-9:]+\] built +/   /' || true
echo "imgspec one-file rebuild, per step:"
grep -E '^\[[0-9:]+\] built ' "$work/inc.log" | sed -E 's/^\[[0-9:]+\] built +/   /' || true

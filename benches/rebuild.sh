#!/usr/bin/env bash
# No-op rebuild and output restore of a spec whose steps are all cached, side by side with a
# plain copy of the same file. Builds once first if needed.
# Usage: benches/rebuild.sh [SPEC] [path/to/imgspec]   (cache: IMGSPEC_CACHE_DIR or default)
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-specs/debian-efi.kdl}
imgspec=${2:-target/release/imgspec}
name=$(basename "$spec" .kdl)
"$imgspec" build "$spec" >/dev/null 2>&1
ms() { local a b; a=$(date +%s%N); "$@" >/dev/null 2>&1; b=$(date +%s%N); echo $(( (b - a) / 1000000 )); }
noop=()
for _ in 1 2 3 4 5; do noop+=("$(ms "$imgspec" build "$spec")"); done
echo "no-op build (5 runs):      ${noop[*]} ms"
big=$(ls -S "out/$name"/"$name".* | head -n1)
rm -f "$big"
restore=$(ms "$imgspec" build "$spec")
copy=$(ms cp "$big" "$big.copy")
rm -f "$big.copy"
echo "restore deleted $(basename "$big") ($(du -h --apparent-size "$big" | cut -f1)): ${restore} ms"
echo "plain cp of the same file: ${copy} ms"

#!/usr/bin/env bash
# Side-by-side: dd, bmaptool and flasher writing the same image to loop block
# devices, in one run, reported as ratios to dd. Needs root (loop devices) and
# the tools from scripts/setup-host. Not part of the test suite: timings are
# measurements, not assertions.
#
#   bash benches/compare-peers.sh [IMAGE_MIB] [DATA_PERCENT]
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-512}"
pct="${2:-25}"
work="$(mktemp -d /var/tmp/flasher-bench.XXXXXX)"
loops=()
cleanup() {
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

bash scripts/build-init >/dev/null
cargo build -q --locked -p mkflasher --bin mkflasher
cargo build -q --release --locked -p flasher --bin flasher
flasher=target/release/flasher
mkflasher=target/debug/mkflasher

# An image with DATA_PERCENT of its 1 MiB blocks holding random data, the rest holes.
img="$work/os.img"
truncate -s "${mib}M" "$img"
step=$((100 / pct))
for ((i = 0; i < mib; i += step)); do
    dd if=/dev/urandom of="$img" bs=1M count=1 seek="$i" conv=notrunc status=none
done
bmaptool -q create -o "$work/os.bmap" "$img"
"$mkflasher" bundle "$img" -o "$work/os.bundle" --bmap "$work/os.bmap" 2>/dev/null

target() {
    truncate -s "$((mib + 64))M" "$work/$1.disk"
    local l
    l="$(losetup --show -f "$work/$1.disk")"
    loops+=("$l")
    echo "$l"
}
secs() {
    local t0 t1
    t0="$(date +%s.%N)"
    "$@" >/dev/null 2>&1
    t1="$(date +%s.%N)"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }' 
}

sync
echo 3 >/proc/sys/vm/drop_caches
t_dd="$(secs dd if="$img" of="$(target dd)" bs=4M conv=fsync)"
t_bmap="$(secs bmaptool copy --bmap "$work/os.bmap" "$img" "$(target bmap)")"
t_fl_none="$(secs "$flasher" write --payload "$work/os.bundle" --target "$(target fl1)" --verify none)"
t_fl_full="$(secs "$flasher" write --payload "$work/os.bundle" --target "$(target fl2)" --verify full)"

printf '%s MiB image, %s%% data (one run, same machine)\n' "$mib" "$pct"
printf '%-36s %8s %8s\n' tool seconds "vs dd"
for row in "dd bs=4M conv=fsync (no verify):$t_dd" \
    "bmaptool copy (no device read-back):$t_bmap" \
    "flasher write --verify none:$t_fl_none" \
    "flasher write --verify full:$t_fl_full"; do
    name="${row%%:*}"
    t="${row##*:}"
    printf '%-36s %8.2f %7.2fx\n' "$name" "$t" "$(awk -v a="$t_dd" -v b="$t" 'BEGIN { printf "%.3f", a / b }')"
done

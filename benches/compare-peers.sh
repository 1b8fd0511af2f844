#!/usr/bin/env bash
# Verified flashing against the device limit and the peers, in one run with
# alternating rounds, reported as medians and ratios (docs/benchmarks.md).
# Needs root (loop devices, mounts, drop_caches) and the tools from
# scripts/setup-host. Not part of the test suite: timings are measurements,
# not assertions.
#
#   bash benches/compare-peers.sh [--size MIB] [--rounds N] [--image IMG]
#                                 [--only sparse|dense] [--targets "file loop emmc"]
#                                 [--source disk|ram] [--out FILE]
#
# Images (unless --image): a GPT disk made with sfdisk, a FAT boot partition
# (mkfs.vfat, a kernel-sized file put there with mcopy) and an ext4 root
# (mkfs.ext4), filled with files copied from /usr through a loop mount until about 35 % (sparse) or 80 % (dense) of the image is
# mapped; bmaptool makes the bmap, so every tool writes the same blocks. Each
# image is used raw and as .zst (the peers read either; flasher reads its
# bundle, which is zstd-compressed chunks either way). Targets: a regular file,
# a loop block device (direct I/O to its backing file), and `emmc`, that loop
# device with the timed command's I/O throttled by a blkio cgroup to an eMMC's
# balance (writes 40 MB/s, reads 120 MB/s by default), all fresh (sparse)
# before every timed run. Caches are dropped before every run; the order of the
# tools rotates from round to round so background load hits all of them alike.
#
# Rows:
#   limit        dd oflag=direct of the mapped bytes (from /dev/zero, one
#                sequential run) + dd iflag=direct read-back: the device limit
#   flasher      flasher write (verified: O_DIRECT read-back of every byte)
#   flasher-v1   flasher write (verified) of the same blocks bundled as version 1
#                (SHA-256 chunk digests; the default bundle is version 2, BLAKE3)
#   flasher-rb-blake3  the same, bundled with --readback-digest chunk (version 2
#                without XXH3-128: the read-back compares BLAKE3 digests)
#   flasher-nov  flasher write --verify none
#   skip-same    flasher write --skip-equal onto a target already holding the image
#   skip-changed flasher write --skip-equal of a changed image (8 MiB rewritten
#                in 4 places) onto a target holding the original
#   mkflasher    mkflasher write (bundles the image first, then writes, verified)
#   bmaptool     bmaptool copy with the same bmap (reads nothing back)
#   dd+cmp       dd bs=4M oflag=direct of the whole image, then cmp
#
# FLASHER_VARIANTS="name=/path/to/flasher ..." adds a verified `flasher write`
# row per other build (how each optimisation was measured: the build before
# and after it, in the same run).
set -euo pipefail
cd "$(dirname "$0")/.."

size=256
rounds=3
image=""
only="sparse dense"
targets="file loop"
out=""
source=disk
while [ $# -gt 0 ]; do
    case "$1" in
    --size) size="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --image) image="$2"; only="given"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --targets) targets="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --source) source="$2"; shift 2 ;;
    *) echo "usage: $0 [--size MIB] [--rounds N] [--image IMG] [--only sparse|dense] [--targets 'file loop emmc'] [--source disk|ram] [--out FILE]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "compare-peers: needs root (loop devices, mounts, drop_caches)" >&2; exit 1; }
bash scripts/setup-host

work="$(mktemp -d /var/tmp/flasher-bench.XXXXXX)"
# Where the timed runs read their inputs (images, bundles): --source disk,
# the work directory on the same disk as the targets (every input byte read
# costs the target's bandwidth); --source ram, a tmpfs, which models a board
# where the card being read and the eMMC being written are separate devices.
in="$work"
case "$source" in
disk) ;;
ram) in="$(mktemp -d /dev/shm/flasher-bench-in.XXXXXX)" ;;
*) echo "compare-peers: --source is disk or ram, not $source" >&2; exit 2 ;;
esac
loops=()
mnt="$work/mnt"
mkdir -p "$mnt"
cleanup() {
    mountpoint -q "$mnt" && umount "$mnt"
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "compare-peers: kept $work" >&2; else rm -rf "$work"; fi
    [ "$in" = "$work" ] || rm -rf "$in"
    [ -z "${cg:-}" ] || rmdir "$cg" 2>/dev/null || true
}
trap cleanup EXIT

# FLASHER and MKFLASHER name prebuilt binaries; by default the release builds.
if [ -z "${FLASHER:-}" ] || [ -z "${MKFLASHER:-}" ]; then
    echo "compare-peers: building release flasher and mkflasher" >&2
    cargo build -q --release --locked -p mkflasher --bin flasher --bin mkflasher
fi
flasher="${FLASHER:-$PWD/target/release/flasher}"
mkflasher="${MKFLASHER:-$PWD/target/release/mkflasher}"

mib=$((1 << 20))

# Copy regular files from /usr into directory $1 until about $2 bytes have been
# copied (real binaries and text: they compress like an OS image does); top up
# with random bytes if /usr runs short.
fill() {
    local dir="$1" want="$2" list="$work/files.list"
    [ "$want" -gt 0 ] || return 0
    { (cd /usr && find lib share -xdev -type f -size +16k -printf '%s\t%p\n' 2>/dev/null) |
        awk -F'\t' -v want="$want" '$2 !~ /[[:space:]]/ { s += $1; print $2; if (s >= want) exit }' >"$list"; } || true
    tar -C /usr -cf - --ignore-failed-read -T "$list" 2>/dev/null | tar -xf - -C "$dir" 2>/dev/null || true
    local got
    got="$(du -sb "$dir" | cut -f1)"
    if [ "$got" -lt "$want" ]; then
        head -c "$((want - got))" /dev/urandom >"$dir/random.bin" 2>/dev/null || true
    fi
}

allocated() { echo $(($(stat -c '%b * %B' "$1"))); }

# A loop device over partition $2 of image $1 (by offset: no udev needed).
part_loop() {
    local start sectors
    read -r start sectors < <(sfdisk -d "$1" |
        sed -n 's/.*start= *\([0-9]*\), *size= *\([0-9]*\).*/\1 \2/p' | sed -n "$2p")
    losetup --show -f -o "$((start * 512))" --sizelimit "$((sectors * 512))" "$1"
}

# build_image NAME PERCENT: $work/NAME.img, a GPT disk about PERCENT % mapped.
build_image() {
    local name="$1" pct="$2" img="$work/$1.img" l
    truncate -s "${size}M" "$img"
    printf 'label: gpt\nsize=%sMiB, type=uefi, name=boot\ntype=linux, name=root\n' "$((size / 8))" |
        sfdisk -q "$img" >/dev/null
    l="$(part_loop "$img" 1)"
    loops+=("$l")
    mkfs.vfat -n BOOT "$l" >/dev/null
    losetup -d "$l"
    # mtools, not a mount: vfat may not be in the kernel (containers).
    # A kernel-sized file: 8 MiB, or half the boot partition of a small image.
    local kernel=$((size / 16 < 8 ? size / 16 : 8))
    head -c $((kernel * mib)) /dev/urandom >"$work/kernel.img"
    mcopy -i "$img@@$((2048 * 512))" "$work/kernel.img" ::kernel.img
    rm "$work/kernel.img"
    l="$(part_loop "$img" 2)"
    loops+=("$l")
    mkfs.ext4 -q -m 0 -L root -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$l"
    mount "$l" "$mnt"
    sync
    # Files from /usr up to 85 % of what is missing (each file costs more
    # than its bytes: block rounding, extents, directories), then random bytes
    # for the rest, measured once the loop device has written through.
    local goal=$((size * mib * pct / 100))
    fill "$mnt" "$(((goal - $(allocated "$img")) * 85 / 100))"
    sync
    local rest=$((goal - $(allocated "$img")))
    if [ "$rest" -gt 0 ]; then
        head -c "$rest" /dev/urandom >"$mnt/top-up.bin" 2>/dev/null || true
    fi
    umount "$mnt"
    losetup -d "$l"
    sync
}

# change_image SRC DST: a copy of SRC with 2 MiB of random bytes written at
# four places inside its mapped ranges (a small update).
change_image() {
    cp --sparse=always "$1" "$2"
    local starts
    starts="$(grep -o '<Range[^>]*> *[0-9]*-[0-9]* *</Range>' "$3" | sed 's/<[^>]*>//g; s/ //g' |
        awk -F- '$2 - $1 >= 512 { print $1 }' | awk 'NR % 7 == 3' | head -4)"
    for b in $starts; do
        dd if=/dev/urandom of="$2" bs=4096 seek="$((b + 1))" count=512 conv=notrunc status=none
    done
}

images=()
for kind in $only; do
    case "$kind" in
    sparse) build_image sparse 35 ;;
    dense) build_image dense 80 ;;
    given) cp --sparse=always "$image" "$work/given.img" ;;
    *) echo "unknown image kind $kind" >&2; exit 2 ;;
    esac
    img="$work/$kind.img"
    bmaptool -q create -o "$work/$kind.bmap" "$img"
    zstd -q -T0 -3 "$img" -o "$img.zst"
    "$mkflasher" bundle "$img" -o "$work/$kind.bundle" --bmap "$work/$kind.bmap" 2>/dev/null
    # The same blocks as a version 1 bundle (SHA-256 chunk digests): the
    # flasher-v1 row, what the BLAKE3 digests of version 2 gain.
    "$mkflasher" bundle "$img" -o "$work/$kind.v1.bundle" --bmap "$work/$kind.bmap" \
        --manifest-version 1 2>/dev/null
    # Version 2 without the XXH3-128 read-back digest (the read-back then
    # uses BLAKE3): the flasher-rb-blake3 row, what XXH3 gains.
    "$mkflasher" bundle "$img" -o "$work/$kind.rbb3.bundle" --bmap "$work/$kind.bmap" \
        --readback-digest chunk 2>/dev/null
    change_image "$img" "$work/$kind.changed.img" "$work/$kind.bmap"
    bmaptool -q create -o "$work/$kind.changed.bmap" "$work/$kind.changed.img"
    "$mkflasher" bundle "$work/$kind.changed.img" -o "$work/$kind.changed.bundle" \
        --bmap "$work/$kind.changed.bmap" 2>/dev/null
    rm "$work/$kind.changed.img"
    if [ "$in" != "$work" ]; then
        for f in "$kind.img" "$kind.img.zst" "$kind.bundle" "$kind.v1.bundle" "$kind.rbb3.bundle" "$kind.changed.bundle"; do
            cp --sparse=always "$work/$f" "$in/$f" && rm "$work/$f"
        done
    fi
    images+=("$kind")
done

# The emmc target: a loop device whose I/O from the timed command is throttled
# by a blkio cgroup to an eMMC's balance (writes EMMC_WRITE_MBS, reads
# EMMC_READ_MBS, in MB/s; docs/benchmarks.md).
emmc_write="${EMMC_WRITE_MBS:-40}"
emmc_read="${EMMC_READ_MBS:-120}"
cg=/sys/fs/cgroup/blkio/flasher-bench
case " $targets " in
*" emmc "*)
    [ -w /sys/fs/cgroup/blkio ] || { echo "compare-peers: the emmc target needs the cgroup v1 blkio controller at /sys/fs/cgroup/blkio" >&2; exit 1; }
    mkdir -p "$cg" ;;
esac

# Fresh target of the image's size + 64 MiB: $work/target (a sparse file) or a
# loop device over it (direct I/O to the backing file). Prints the path.
target_path=""
fresh_target() {
    local kind="$1" img="$2" l
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    loops=()
    rm -f "$work/target"
    truncate -s "$(($(stat -c %s "$img") + 64 * mib))" "$work/target"
    if [ "$kind" = loop ] || [ "$kind" = emmc ]; then
        l="$(losetup --direct-io=on --show -f "$work/target")"
        loops+=("$l")
        target_path="$l"
        if [ "$kind" = emmc ]; then
            local mm
            mm="$(lsblk -dno MAJ:MIN "$l" | tr -d ' ')"
            echo "$mm $((emmc_write * 1000000))" >"$cg/blkio.throttle.write_bps_device"
            echo "$mm $((emmc_read * 1000000))" >"$cg/blkio.throttle.read_bps_device"
        fi
    else
        target_path="$work/target"
    fi
}

res="$work/results.tsv"
: >"$res"

# run ROUND IMAGE TARGETKIND TOOL INPUT: one timed run on a fresh target.
run() {
    local round="$1" kind="$2" tk="$3" tool="$4" input="$5"
    local img="$in/$kind.img" bundle="$in/$kind.bundle" t
    fresh_target "$tk" "$img"
    t="$target_path"
    local src="$img"
    [ "$input" = zst ] && src="$img.zst"
    local mapped
    mapped="$(sed -n 's/.*<MappedBlocksCount> *\([0-9]*\).*/\1/p' "$work/$kind.bmap")"
    local cmd
    case "$tool" in
    limit) cmd="dd if=/dev/zero of=$t bs=4M count=$((mapped * 4096)) iflag=count_bytes oflag=direct conv=notrunc,fsync status=none && dd if=$t of=/dev/null bs=4M count=$((mapped * 4096)) iflag=direct,count_bytes status=none" ;;
    flasher) cmd="$flasher write --payload $bundle --target $t" ;;
    flasher-nov) cmd="$flasher write --payload $bundle --target $t --verify none" ;;
    flasher-v1) cmd="$flasher write --payload $in/$kind.v1.bundle --target $t" ;;
    flasher-rb-blake3) cmd="$flasher write --payload $in/$kind.rbb3.bundle --target $t" ;;
    variant=*) cmd="${tool#variant=} write --payload $bundle --target $t" ;;
    skip-same | skip-changed)
        "$flasher" write --payload "$bundle" --target "$t" --verify none >/dev/null 2>&1
        local b="$bundle"
        [ "$tool" = skip-changed ] && b="$in/$kind.changed.bundle"
        cmd="$flasher write --payload $b --target $t --skip-equal" ;;
    mkflasher) cmd="$mkflasher write --yes --allow-non-removable --tmp-dir $work $src $t" ;;
    bmaptool) cmd="bmaptool -q copy --bmap $work/$kind.bmap $src $t" ;;
    dd+cmp)
        if [ "$input" = zst ]; then
            cmd="zstd -dcq $src | dd of=$t bs=4M iflag=fullblock oflag=direct conv=notrunc,fsync status=none && zstd -dcq $src | cmp -n $(stat -c %s "$img") - $t"
        else
            cmd="dd if=$src of=$t bs=4M oflag=direct conv=notrunc,fsync status=none && cmp -n $(stat -c %s "$img") $src $t"
        fi ;;
    esac
    sync
    echo 3 >/proc/sys/vm/drop_caches
    local t0 t1 rss
    t0="$(date +%s.%N)"
    # On the emmc target the run (and its children) is in the throttled cgroup.
    if ! (if [ "$tk" = emmc ]; then echo "$BASHPID" >"$cg/cgroup.procs"; fi
        exec /usr/bin/time -f %M -o "$work/rss" sh -c "$cmd") >"$work/log" 2>&1; then
        echo "compare-peers: $tool ($input) on $kind/$tk failed:" >&2
        cat "$work/log" >&2
        exit 1
    fi
    t1="$(date +%s.%N)"
    rss="$(tail -1 "$work/rss")"
    if [[ "$tool" == variant=* ]]; then tool="flasher@$input" input=-; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$kind" "$tk" "$tool" "$input" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" "$rss" >>"$res"
}

rows=("limit -" "flasher -" "flasher-v1 -" "flasher-rb-blake3 -" "flasher-nov -" "skip-same -" "skip-changed -"
    "mkflasher raw" "mkflasher zst" "bmaptool raw" "bmaptool zst" "dd+cmp raw" "dd+cmp zst")
for v in ${FLASHER_VARIANTS:-}; do rows+=("variant=${v#*=} ${v%%=*}"); done
n=${#rows[@]}
for ((r = 0; r < rounds; r++)); do
    echo "compare-peers: round $((r + 1)) of $rounds" >&2
    for kind in "${images[@]}"; do
        for tk in $targets; do
            for ((i = 0; i < n; i++)); do
                # Rotate the order each round.
                row="${rows[$(((i + r * 5) % n))]}"
                run "$r" "$kind" "$tk" ${row}
            done
        done
    done
done

# The table: medians per (image, target, tool, input), ratios to the limit and
# to flasher verified, and the peak RSS (median of the runs' maxima).
report() {
    echo "| image | target | tool | input | median s | × limit | flasher ÷ tool | peak RSS MiB |"
    echo "|---|---|---|---|---|---|---|---|"
    sort -t$'\t' -k2,2 -k3,3 -k4,4 -k5,5 -k6,6n "$res" | awk -F'\t' '
        function flush() {
            if (key == "") return
            m = (c % 2) ? t[(c + 1) / 2] : (t[c / 2] + t[c / 2 + 1]) / 2
            med[key] = m; rss[key] = r; order[++nk] = key
        }
        { k = $2 "\t" $3 "\t" $4 "\t" $5
          if (k != key) { flush(); key = k; c = 0; r = 0 }
          t[++c] = $6; if ($7 + 0 > r) r = $7 + 0 }
        END {
            flush()
            for (i = 1; i <= nk; i++) {
                split(order[i], f, "\t")
                lim = med[f[1] "\t" f[2] "\tlimit\t-"]
                fl = med[f[1] "\t" f[2] "\tflasher\t-"]
                printf "| %s | %s | %s | %s | %.2f | %.2f | %.2f | %.0f |\n", f[1], f[2], f[3], f[4], med[order[i]], med[order[i]] / lim, fl / med[order[i]], rss[order[i]] / 1024
            }
        }'
    echo
    echo "Targets (issue 15), per image and target:"
    echo
    awk -F'\t' '{ k = $2 "\t" $3 "\t" $4 "\t" $5; v[k] = v[k] " " $6; if ($7 + 0 > rs[$4]) rs[$4] = $7 + 0; im[$2 "\t" $3] = 1 }
        function med(s,  a, n, i, j, x) {
            n = split(s, a, " ")
            for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function verdict(ok) { return ok ? "reached" : "NOT reached" }
        END {
            for (p in im) {
                split(p, f, "\t")
                fl = med(v[p "\tflasher\t-"]); lim = med(v[p "\tlimit\t-"])
                bm = med(v[p "\tbmaptool\traw"]); dd = med(v[p "\tdd+cmp\traw"]); ss = med(v[p "\tskip-same\t-"])
                printf "- %s/%s: verified %.2f× the limit (≤ 1.25: %s); %.2f× bmaptool (≤ 1: %s); dd+cmp %.2f× flasher (≥ 3: %s); skip-equal identical %.2f× first flash (≤ 0.5: %s)\n", f[1], f[2], fl / lim, verdict(fl / lim <= 1.25), fl / bm, verdict(fl <= bm), dd / fl, verdict(dd / fl >= 3), ss / fl, verdict(ss / fl <= 0.5)
            }
            m = 0; for (t in rs) if (t ~ /^(flasher|flasher-nov|skip-same|skip-changed)$/ && rs[t] > m) m = rs[t]
            printf "- flasher peak RSS %.1f MiB (≤ 64: %s)\n", m / 1024, verdict(m <= 65536)
        }' "$res"
}

{
    echo "$(date -u +%F), ${image:-${size} MiB images}, inputs on $source, $rounds rounds, $(nproc) CPUs, $(uname -r), bmaptool $(bmaptool --version 2>&1 | awk '{print $2}')"
    for kind in "${images[@]}"; do
        mb="$(sed -n 's/.*<MappedBlocksCount> *\([0-9]*\).*/\1/p' "$work/$kind.bmap")"
        tb="$(sed -n 's/.*<BlocksCount> *\([0-9]*\).*/\1/p' "$work/$kind.bmap")"
        echo "- $kind: $((mb * 4096 / mib)) of $((tb * 4096 / mib)) MiB mapped ($((mb * 100 / tb)) %), .zst $(($(stat -c %s "$in/$kind.img.zst") / mib)) MiB, bundle $(($(stat -c %s "$in/$kind.bundle") / mib)) MiB"
    done
    echo
    report
} | tee "${out:-/dev/null}"

# shellcheck shell=bash
# apt on its own lists and cache under a directory, for fetching Debian
# packages of another architecture (armhf) without touching the machine's apt
# state: no `dpkg --add-architecture`, and a stale index elsewhere cannot fail
# the fetch. Packages are only downloaded (`apt-get download`) and unpacked
# with `dpkg -x` by the caller, never installed.
#
#   source scripts/lib/private-apt.sh
#   private_apt_init DIR "amd64 armhf" "bookworm" ["bookworm-security" ...]
#   apt-get "${PRIVATE_APT[@]}" -q download PKG...
#
# The first suite is from deb.debian.org/debian; a suite ending in -security
# comes from deb.debian.org/debian-security. Only `main`.

# Sets PRIVATE_APT (the apt-get/apt-cache options) and runs `apt-get update`.
# An index that fails to update (the bookworm-security armhf index was seen
# "Mirror sync in progress" on 2026-12-01) is reported, not fatal: the caller
# fails later, naming the package, if what it needs is missing.
private_apt_init() {
    local dir=$1 archs=$2
    shift 2
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
    : >"$dir/sources.list"
    local suite base
    for suite in "$@"; do
        base=http://deb.debian.org/debian
        case "$suite" in *-security) base=http://deb.debian.org/debian-security ;; esac
        echo "deb [arch=${archs// /,} signed-by=$keyring] $base $suite main" >>"$dir/sources.list"
    done
    PRIVATE_APT=(
        -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache"
        -o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=$dir/none"
        -o "Acquire::Languages=none" -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
        -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
    )
    local a first=1
    for a in $archs; do
        if [ "$first" = 1 ]; then
            PRIVATE_APT+=(-o "APT::Architecture=$a" -o "APT::Architectures::=$a")
            first=0
        else
            PRIVATE_APT+=(-o "APT::Architectures::=$a")
        fi
    done
    if ! apt-get "${PRIVATE_APT[@]}" -q update; then
        echo "private-apt: some index in $dir/sources.list failed to update; going on with the others" >&2
    fi
}

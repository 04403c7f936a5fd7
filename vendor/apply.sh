#!/usr/bin/env bash
# Rebuilds the vendored pingora crates from their crates.io releases and vendor/patches/*.patch.
#
#   vendor/apply.sh OUT              # OUT/pingora-core and OUT/pingora-proxy: release + patches
#   vendor/apply.sh --check          # the same into a temporary dir, then compared with vendor/
#   PINGORA_VERSION=0.9.2 vendor/apply.sh OUT   # the patches onto another 0.9.x (to upgrade)
#   BEFORE=0003 vendor/apply.sh OUT  # only the patches whose names sort before 0003 (to edit 0003)
#
# Each crate is the `.crate` archive of the release, exactly (every file in it, nothing else),
# then the patches in name order, each applied with no fuzz: a patch that no longer applies
# stops the script with patch's message. The archive comes from cargo's download cache
# (~/.cargo/registry/cache/*/), else $PINGORA_CRATES/<name>-<version>.crate, else crates.io
# (static.crates.io, kept in ${XDG_CACHE_HOME:-~/.cache}/flynn-vendor); its SHA-256 must be the
# one pinned below for 0.9.1 (for another version: the checksum in crates.io's index).
#
# The patches are plain unified diffs (`patch -p1` from the directory holding both crates),
# each with a header saying why it exists and when it can go. To change a patch: edit vendor/,
# then regenerate the patch as the diff between the state before it and vendor/ (see
# vendor/README.md).
set -euo pipefail

VERSION=${PINGORA_VERSION:-0.9.1}
CRATES=(pingora-core pingora-proxy)
declare -A PINNED=(
    [pingora-core-0.9.1]=a535f47f65fdcb003f9e1df04cd18e614c128dfe9388acce3f211ae38ac14d68
    [pingora-proxy-0.9.1]=8e3d5670490740405ecc8c6f75c3fcbce4d24f7adaffb355ca44550e7918e358
)

VENDOR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
    echo "vendor/apply.sh: $*" >&2
    exit 1
}

for tool in patch tar sha256sum diff; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

# The expected SHA-256 of NAME-VERSION.crate.
expected_sum() { # expected_sum NAME
    local key="$1-$VERSION" prefix
    if [[ -n ${PINNED[$key]:-} ]]; then
        echo "${PINNED[$key]}"
        return
    fi
    # crates.io's sparse index: one JSON line per version, with its `cksum`.
    prefix="${1:0:2}/${1:2:2}"
    curl -sSf "https://index.crates.io/$prefix/$1" |
        grep -F "\"vers\":\"$VERSION\"" | grep -o '"cksum":"[0-9a-f]*"' | cut -d'"' -f4 |
        grep . || die "no checksum for $key in crates.io's index"
}

# Prints the path of a verified NAME-VERSION.crate.
crate_file() { # crate_file NAME
    local name="$1-$VERSION.crate" want candidate cache
    want=$(expected_sum "$1")
    for candidate in "${PINGORA_CRATES:-/nonexistent}/$name" \
        "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$name"; do
        if [[ -f $candidate ]] && [[ $(sha256sum "$candidate" | cut -d' ' -f1) == "$want" ]]; then
            echo "$candidate"
            return
        fi
    done
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/flynn-vendor
    mkdir -p "$cache"
    if [[ ! -f $cache/$name ]] || [[ $(sha256sum "$cache/$name" | cut -d' ' -f1) != "$want" ]]; then
        echo "vendor/apply.sh: downloading $name from crates.io" >&2
        curl -sSfL -o "$cache/$name.part" "https://static.crates.io/crates/$1/$name" ||
            die "cannot download $name"
        mv "$cache/$name.part" "$cache/$name"
    fi
    [[ $(sha256sum "$cache/$name" | cut -d' ' -f1) == "$want" ]] ||
        die "$name does not have the SHA-256 $want"
    echo "$cache/$name"
}

# Writes release + patches into OUT (which must not hold the crates yet).
build() { # build OUT
    local out=$1 name file patch
    mkdir -p "$out"
    for name in "${CRATES[@]}"; do
        [[ ! -e $out/$name ]] || die "$out/$name already exists"
        file=$(crate_file "$name")
        tar -xzf "$file" -C "$out"
        mv "$out/$name-$VERSION" "$out/$name"
    done
    for patch in "$VENDOR"/patches/*.patch; do
        if [[ -n ${BEFORE:-} && ! $(basename "$patch") < $BEFORE ]]; then
            continue
        fi
        patch -d "$out" -p1 --fuzz=0 --no-backup-if-mismatch --quiet --forward <"$patch" ||
            die "$(basename "$patch") does not apply to pingora $VERSION"
    done
}

case ${1:-} in
    --check)
        work=$(mktemp -d -t flynn-vendor.XXXXXX)
        trap 'rm -rf "$work"' EXIT
        build "$work"
        status=0
        for name in "${CRATES[@]}"; do
            diff -r "$work/$name" "$VENDOR/$name" >&2 || status=1
        done
        ((status == 0)) || die "vendor/ differs from pingora $VERSION + vendor/patches (above: release+patches first, vendor/ second)"
        echo "vendor/: pingora $VERSION + $(find "$VENDOR/patches" -name '*.patch' | wc -l) patches, identical"
        ;;
    "" | -*) die "usage: vendor/apply.sh OUT | --check" ;;
    *) build "$1" ;;
esac

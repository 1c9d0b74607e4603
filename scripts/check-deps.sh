#!/usr/bin/env bash
# Checks the resolved dependencies against the pins in deny.toml, without
# cargo-deny and without an advisory database:
#
#   - every ed25519-dalek is 2.0 or later, and neither ed25519-dalek nor
#     curve25519-dalek is built with legacy_compatibility (which accepts
#     malleable signatures again);
#   - every openssl is 0.10.80 or later;
#   - no jsonwebtoken is older than 10.3.
#
# A pre-release is older than its release. scripts/test-check-deps.sh
# checks that each of these fails on a doctored copy of the tree.
#
# Versions come from Cargo.lock and fuzz/Cargo.lock, because they list
# every package that any feature or target can pull in. Features come from
# `cargo tree -e features` with all features on every target.
#
# What this cannot check: security advisories. The RustSec database lives
# on GitHub, which CI cannot reach; `cargo deny check advisories` covers it
# on a machine that can.
set -euo pipefail
cd "$(dirname "$0")/.."

failures=0
fail() {
    printf 'check-deps.sh: %s\n' "$*" >&2
    failures=$((failures + 1))
}

# Prints "name version" for each package in a lockfile.
packages() {
    awk '/^\[\[package\]\]/ { name = "" } /^name = / { gsub(/"/, "", $3); name = $3 } /^version = / { gsub(/"/, "", $3); if (name != "") print name, $3 }' "$1"
}

# Succeeds when version $1 is at least $2. A pre-release is older than
# its release (2.0.0-rc.1 < 2.0.0), which sort -V alone gets wrong.
at_least() {
    local version=$1 floor=$2
    local core=${version%%-*}
    if [[ $core == "$floor" && $version != "$core" ]]; then
        return 1
    fi
    [[ $(printf '%s\n%s\n' "$floor" "$core" | sort -V | head -n 1) == "$floor" ]]
}

check_floor() {
    local lockfile=$1 crate=$2 floor=$3
    local name version
    while read -r name version; do
        if [[ $name == "$crate" ]] && ! at_least "$version" "$floor"; then
            fail "$lockfile: $crate $version is older than $floor"
        fi
    done < <(packages "$lockfile")
}

check_no_feature() {
    local manifest=$1 crate=$2 feature=$3
    local version
    for version in $(packages "${manifest%Cargo.toml}Cargo.lock" | awk -v crate="$crate" '$1 == crate { print $2 }'); do
        local tree
        if ! tree=$(cargo tree --manifest-path "$manifest" --locked --all-features --target all \
            -e features -i "$crate@$version" 2>&1); then
            fail "$manifest: cargo tree failed for $crate $version: $tree"
            continue
        fi
        if grep -q "$crate feature \"$feature\"" <<<"$tree"; then
            fail "$manifest: $crate $version is built with the $feature feature"
        fi
    done
}

for lockfile in Cargo.lock fuzz/Cargo.lock; do
    [[ -f $lockfile ]] || continue
    check_floor "$lockfile" ed25519-dalek 2.0.0
    check_floor "$lockfile" openssl 0.10.80
    check_floor "$lockfile" jsonwebtoken 10.3.0
done

for manifest in Cargo.toml fuzz/Cargo.toml; do
    [[ -f $manifest ]] || continue
    check_no_feature "$manifest" ed25519-dalek legacy_compatibility
    check_no_feature "$manifest" curve25519-dalek legacy_compatibility
done

if ((failures > 0)); then
    printf 'check-deps.sh: %d dependency check(s) failed\n' "$failures" >&2
    exit 1
fi
echo "check-deps.sh: dependency pins hold (advisories not checked: no advisory database is reachable)"

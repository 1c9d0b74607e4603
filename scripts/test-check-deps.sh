#!/usr/bin/env bash
# Tests scripts/check-deps.sh: a copy of the working tree must pass, and
# copies with one doctored pin each must fail with that pin's message.
#
# Each case runs in its own copy under a temporary directory, so the real
# Cargo.lock and Cargo.toml are never changed. About a minute in all, most
# of it in cargo tree.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test-check-deps.sh: %s\n' "$*" >&2; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failures=0
passes=0

# Copies the tracked and untracked, not ignored, files into a new directory
# and prints its path.
copy_tree() {
    local copy
    copy=$(mktemp -d "$scratch/copy.XXXXXX")
    git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} "$copy" 2>/dev/null || true
    echo "$copy"
}

# Sets the version of package $2 in lockfile $1 to $3.
set_locked_version() {
    local lockfile=$1 crate=$2 version=$3
    awk -v crate="$crate" -v version="$version" '
        /^\[\[package\]\]/ { in_crate = 0 }
        $0 == "name = \"" crate "\"" { in_crate = 1 }
        in_crate && /^version = / { $0 = "version = \"" version "\""; in_crate = 0 }
        { print }
    ' "$lockfile" >"$lockfile.new"
    mv "$lockfile.new" "$lockfile"
    grep -q "^version = \"$version\"" "$lockfile" || { log "cannot doctor $crate in $lockfile"; exit 2; }
}

# Prints the version of package $1 in Cargo.lock.
locked_version() {
    awk -v crate="$1" '$0 == "name = \"" crate "\"" { found = 1; next } found && /^version = / { gsub(/"/, "", $3); print $3; exit }' Cargo.lock
}

# Runs check-deps.sh in $1 and checks that it fails with each of the
# following arguments in its output.
expect_failure() {
    local copy=$1 message output status=0
    shift
    output=$(bash "$copy/scripts/check-deps.sh" 2>&1) || status=$?
    for message in "$@"; do
        if ((status == 0)); then
            log "FAIL: check-deps.sh passed, expected: $message"
            failures=$((failures + 1))
        elif ! grep -qF "$message" <<<"$output"; then
            log "FAIL: check-deps.sh failed without: $message"
            printf '%s\n' "$output" >&2
            failures=$((failures + 1))
        else
            log "ok: $message"
            passes=$((passes + 1))
        fi
    done
}

log "unchanged copy"
copy=$(copy_tree)
if output=$(bash "$copy/scripts/check-deps.sh" 2>&1); then
    log "ok: the unchanged copy passes"
    passes=$((passes + 1))
else
    log "FAIL: the unchanged copy fails:"
    printf '%s\n' "$output" >&2
    failures=$((failures + 1))
fi

copy=$(copy_tree)
set_locked_version "$copy/Cargo.lock" openssl 0.10.79
expect_failure "$copy" "Cargo.lock: openssl 0.10.79 is older than 0.10.80"

copy=$(copy_tree)
set_locked_version "$copy/Cargo.lock" jsonwebtoken 10.2.0
expect_failure "$copy" "Cargo.lock: jsonwebtoken 10.2.0 is older than 10.3.0"

copy=$(copy_tree)
set_locked_version "$copy/Cargo.lock" jsonwebtoken 10.3.0-rc.1
expect_failure "$copy" "Cargo.lock: jsonwebtoken 10.3.0-rc.1 is older than 10.3.0"

copy=$(copy_tree)
set_locked_version "$copy/fuzz/Cargo.lock" ed25519-dalek 1.0.1
expect_failure "$copy" "fuzz/Cargo.lock: ed25519-dalek 1.0.1 is older than 2.0.0"

copy=$(copy_tree)
sed -i 's/^ed25519-dalek = { version = "\([^"]*\)", features = \["batch", "zeroize"\] }$/ed25519-dalek = { version = "\1", features = ["batch", "zeroize", "legacy_compatibility"] }/' "$copy/Cargo.toml"
grep -q '"legacy_compatibility"' "$copy/Cargo.toml" || { log "cannot turn on legacy_compatibility in Cargo.toml"; exit 2; }
expect_failure "$copy" \
    "Cargo.toml: ed25519-dalek $(locked_version ed25519-dalek) is built with the legacy_compatibility feature" \
    "Cargo.toml: curve25519-dalek $(locked_version curve25519-dalek) is built with the legacy_compatibility feature"

echo "test-check-deps.sh: $passes passed, $failures failed"
((failures == 0))

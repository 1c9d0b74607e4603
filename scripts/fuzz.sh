#!/usr/bin/env bash
# Runs each libFuzzer target in fuzz/ for a bounded time.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET defaults to FUZZ_SECONDS or 30; TARGET defaults to all.
#   FUZZ_PROFILE=dev builds without optimisation: a much shorter cold build
#   for a smoke run in CI, at the cost of fewer executions per second.
#
# Installs cargo-fuzz from crates.io when it is missing. Builds on the stable
# toolchain: with --sanitizer none, cargo-fuzz passes rustc no -Z flag. The
# crate forbids unsafe code, so AddressSanitizer would watch only the
# dependencies; run `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer address`
# by hand for that.
#
# The seeds in fuzz/corpus/TARGET are read, never written: new inputs go to
# fuzz/target/corpus-work/TARGET. A crash leaves its input in
# fuzz/artifacts/TARGET and makes this script exit non-zero. Each target's
# last line is "fuzz.sh: TARGET ran S s, N runs, 0 crashes".
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

log() { printf 'fuzz.sh: %s\n' "$*" >&2; }

seconds=${1:-${FUZZ_SECONDS:-30}}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(verify_token parse_jwks parse_policy http_request open_sealed nats_headers amqp_headers)
fi

if ! command -v cargo-fuzz >/dev/null; then
    log "installing cargo-fuzz 0.13.2 from crates.io"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

profile=()
if [[ ${FUZZ_PROFILE:-release} == dev ]]; then
    profile=(--dev)
fi

log "building ${targets[*]}"
cargo fuzz build "${profile[@]}" --sanitizer none

for target in "${targets[@]}"; do
    work=target/corpus-work/$target
    mkdir -p "$work"
    output=$(mktemp)
    log "running $target for $seconds s"
    # -max_len 16384: twice the verifier's default token limit, so the
    # too_large paths are reached as well.
    status=0
    cargo fuzz run "${profile[@]}" --sanitizer none "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$output" 2>&1 || status=$?
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$output" >&2 || true
    if ((status != 0)); then
        tail -n 40 "$output" >&2
        log "$target failed with status $status; a crashing input is in fuzz/artifacts/$target"
        rm -f "$output"
        exit 1
    fi
    runs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$output" | grep -oE '[0-9]+$' || echo unknown)
    rm -f "$output"
    echo "fuzz.sh: $target ran $seconds s, $runs runs, 0 crashes"
done

#!/bin/sh
# The one way to build the static release binary. Used by the Dockerfile and by
# tests/container.rs so the image and the test can never build different things.
#
#   scripts/build-static.sh                       # prints the binary path as the last stdout line
#   CARGO_TARGET_DIR=/x scripts/build-static.sh   # an existing CARGO_TARGET_DIR is respected
#
# Static glibc (+crt-static on the gnu target) rather than musl: no extra target or C toolchain
# to install, and glibc's allocator and string functions are faster than musl's. Host names
# (the broker's login.microsoftonline.com) still resolve: glibc >= 2.34 has the `files` and
# `dns` NSS modules built in, so a static binary reads /etc/hosts and /etc/resolv.conf without
# shared NSS libraries (checked in a chroot holding only /etc/hosts).
# The release profile in Cargo.toml already sets opt-level 3, lto, codegen-units 1 and strip.
set -eu

TARGET=x86_64-unknown-linux-gnu

# Resolve a relative CARGO_TARGET_DIR against the caller's directory before we cd.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in
        /*) ;;
        *) CARGO_TARGET_DIR="$(pwd)/$CARGO_TARGET_DIR" ;;
    esac
    export CARGO_TARGET_DIR
fi

cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"

# CARGO_ENCODED_RUSTFLAGS (set by some wrappers) would silently take precedence over RUSTFLAGS.
unset CARGO_ENCODED_RUSTFLAGS

# getrandom_backend="linux_getrandom": getrandom 0.3 otherwise finds glibc's getrandom() with
# dlsym, which always fails in a static binary, and silently falls back to reading /dev/urandom;
# in a root without /dev the relay then cannot start ("cannot start the server: OS Error: 2").
# This makes it call getrandom(2) directly (Linux >= 3.17), the option the crate's maintainers
# name for static glibc builds (rust-random/getrandom#758). tests/container.rs runs the binary
# with no /dev, so a regression here fails that test.
#
# Everything cargo prints goes to stderr, so the last stdout line is always the path.
RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
    cargo build --release --locked --target "$TARGET" 1>&2

BIN="$TARGET_DIR/$TARGET/release/oauth-relay"
if [ ! -x "$BIN" ]; then
    echo "build-static.sh: expected binary not found at $BIN" >&2
    exit 1
fi
echo "$BIN"

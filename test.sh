#!/usr/bin/env bash
# Runs simvm's whole test suite: formatting, lints, unit tests (no KVM needed) and the
# integration tests that boot real guests under KVM. The first run builds the guest image
# (about four minutes on two cores); later runs reuse it from the content-addressed cache.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null; then
    echo "test.sh: cargo is not installed (https://rustup.rs)" >&2
    exit 1
fi

# tshark reads the packet captures in the network tests.
if ! command -v tshark >/dev/null; then
    echo "== installing tshark (Debian package) for the packet-capture test"
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: tshark is missing; install it with: sudo apt-get install tshark" >&2
        exit 1
    fi
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends tshark >/dev/null
fi

# e2fsprogs builds disk images (mkfs.ext4 -d) and checks kept ones (e2fsck) in the disk tests.
have() { command -v "$1" >/dev/null || [ -x "/sbin/$1" ] || [ -x "/usr/sbin/$1" ]; }
if ! have mkfs.ext4 || ! have e2fsck; then
    echo "== installing e2fsprogs (Debian package) for the disk tests"
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: e2fsprogs is missing; install it with: sudo apt-get install e2fsprogs" >&2
        exit 1
    fi
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends e2fsprogs >/dev/null
fi

# chromium opens the checker's HTML timeline in the etcd test.
if ! command -v chromium >/dev/null; then
    echo "== installing chromium (Debian package) for the history timeline test"
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: chromium is missing; install it with: sudo apt-get install chromium" >&2
        exit 1
    fi
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null
fi

echo "== guest image"
bash guest-images/build.sh >/dev/null
bash guest-images/build.sh --recipe etcd >/dev/null
bash guest-images/build.sh --recipe sqlite >/dev/null
bash guest-images/build.sh --recipe-tree etcd >/dev/null

echo "== format"
cargo fmt --all -- --check

echo "== tests"
# The integration tests drive the simvm binary, which `cargo test` does not build by itself.
cargo build -p simvm
# One test at a time: each boot keeps a core busy for tens of seconds, and the determinism tests
# already run their repeats side by side on both cores.
cargo test --workspace -- --test-threads=1

# Lints last: on a fresh target directory, a `cargo build` right after `cargo clippy` once failed
# here on a target-information probe cached from the clippy run.
echo "== lints"
cargo clippy --workspace --all-targets -- -D warnings

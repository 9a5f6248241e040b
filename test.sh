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

have() { command -v "$1" >/dev/null || [ -x "/sbin/$1" ] || [ -x "/usr/sbin/$1" ]; }

# install_package PACKAGE WHAT: installs a Debian package the tests need (as root), or says how to.
install_package() {
    echo "== installing $1 (Debian package) for $2"
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: $1 is missing; install it with: sudo apt-get install $1" >&2
        exit 1
    fi
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$1" >/dev/null
}

# tshark reads the packet captures in the network tests.
have tshark || install_package tshark "the packet-capture test"
# e2fsprogs builds disk images (mkfs.ext4 -d) and checks kept ones (e2fsck) in the disk tests.
{ have mkfs.ext4 && have e2fsck; } || install_package e2fsprogs "the disk tests"
# chromium opens the checker's HTML timeline in the etcd test.
have chromium || install_package chromium "the history timeline test"

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

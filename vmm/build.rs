//! Fingerprints simvm's own source (this crate and the device models) for machine templates:
//! a template holds device and vCPU state as this code saved it and a boot as this code drove
//! it, so a template from other code is never reused (docs/templates.md).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// FNV-1a, 64 bits: stable across Rust versions, unlike `DefaultHasher`.
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let roots = [manifest.join("src"), manifest.join("../devices/src")];
    let mut files = Vec::new();
    for root in &roots {
        println!("cargo:rerun-if-changed={}", root.display());
        rust_files(root, &mut files);
    }
    files.sort();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for file in &files {
        let relative = file.strip_prefix(&manifest).unwrap_or(file);
        fnv1a(&mut hash, relative.to_string_lossy().as_bytes());
        fnv1a(&mut hash, &std::fs::read(file).unwrap_or_default());
    }
    println!("cargo:rustc-env=SIMVM_SOURCE_HASH={hash:016x}");
}

//! Device models for simvm machines.
//!
//! Nothing in this crate touches KVM, spawns a thread, uses an eventfd or reads host time: every
//! device is a plain state machine driven by the VMM at VM exits, so it can be unit-tested as plain
//! Rust and behaves identically on every run.

// No unsafe code here; every guest-controlled narrowing conversion is checked or justified.
#![forbid(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::cast_possible_truncation)]

pub mod abi;
pub mod bus;
pub mod disk;
pub mod irq;
pub mod net;
pub mod pic;
pub mod pvclock;
pub mod serial;
pub mod snapshot;
pub mod virtio;

#[cfg(test)]
mod fuzz;

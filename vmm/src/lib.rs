//! simvm's VMM: machines under KVM and the world that steps them in virtual time.
//!
//! A [`world::World`] owns every machine of a run and one trace. It always steps the machine with
//! the lowest virtual time (ties by index): that machine's vCPU runs to its next exit, the exit is
//! handled by the machine's devices, and every guest-visible effect is recorded in the trace,
//! whose digest identifies the run.

// Every unsafe block says why it is sound.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod assertions;
pub mod boot;
pub mod boot_data;
pub mod clock;
pub mod cmdline;
pub mod console;
pub mod cpio;
pub mod cpuid;
pub mod crash;
pub mod disk_image;
pub mod disks;
pub mod error;
pub mod history;
pub mod host_cpu;
pub mod host_tsc;
pub mod image;
pub mod kvm_ext;
pub mod layout;
pub mod machine;
pub mod msr;
pub mod nemesis;
pub mod network;
pub mod page_work;
pub mod profile;
pub mod scenario;
pub mod seed;
pub mod simulation;
pub mod skew;
pub mod state;
pub mod template;
pub mod test_elf;
pub mod trace;
pub mod tuning;
pub mod units;
pub mod vcpu_state;
pub mod watchdog;
pub mod world;

pub use error::{Error, Result};

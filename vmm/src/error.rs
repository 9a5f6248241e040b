//! Errors of the VMM. Every failure a user or a guest can cause ends up here, never in a panic.

use std::io;
use std::path::PathBuf;

use vmm_sys_util::errno;

use crate::crash::CrashReport;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot open {}: {source}\n  simvm needs KVM. Check that virtualization is enabled and the kvm module is \
         loaded (`ls -l /dev/kvm`), and that your user may use it: `sudo usermod -aG kvm $USER` \
         (then log in again) or `sudo setfacl -m u:$USER:rw /dev/kvm`.", path.display()
    )]
    KvmOpen { path: PathBuf, source: errno::Error },

    #[error("KVM does not offer {0}, which simvm needs")]
    KvmCapability(&'static str),

    #[error("{op} failed: {source}")]
    Kvm {
        op: &'static str,
        source: errno::Error,
    },

    #[error("cannot open the guest kernel {}: {source}", path.display())]
    KernelOpen { path: PathBuf, source: io::Error },

    #[error("cannot load the guest kernel {}: {reason} (simvm boots an uncompressed ELF vmlinux)", path.display())]
    KernelLoad { path: PathBuf, reason: String },

    #[error("cannot read the initramfs {}: {source}", path.display())]
    InitramfsOpen { path: PathBuf, source: io::Error },
    #[error("the initramfs is empty: the guest needs a cpio archive holding its init")]
    EmptyInitramfs,

    #[error("guest memory of {} is too small: the kernel and initramfs need at least {} MiB", crate::units::format_size(*mem_size), needed.div_ceil(1 << 20))]
    MemoryTooSmall { mem_size: u64, needed: u64 },

    #[error("guest memory of {} is too large: simvm machines have at most {} MiB", crate::units::format_size(*mem_size), max >> 20)]
    MemoryTooLarge { mem_size: u64, max: u64 },

    #[error("cannot allocate {} of guest memory: {reason}", crate::units::format_size(*mem_size))]
    MemoryAlloc { mem_size: u64, reason: String },

    #[error("guest memory access failed: {0}")]
    GuestMemory(String),

    #[error("bad kernel command line: {0}")]
    Cmdline(String),

    #[error("the host CPU lacks {0}, which simvm's fixed guest CPU model needs")]
    HostCpu(String),

    #[error("cannot start the watchdog: {0}")]
    Watchdog(String),

    #[error("cannot pin the simulation thread to host CPU {cpu}: {source}")]
    PinCpu { cpu: usize, source: std::io::Error },

    #[error("{0}")]
    GuestCrash(Box<CrashReport>),

    #[error("network: {0}")]
    Network(String),

    #[error("cannot write the packet capture {}: {source}", path.display())]
    Pcap { path: PathBuf, source: io::Error },

    #[error("cannot write the trace: {0}")]
    Trace(io::Error),

    #[error(
        "cannot keep the host TSC from guest programs (CR4.TSD for the simulation thread): {0}"
    )]
    TscTrap(String),

    #[error("timeline: {0}")]
    Timeline(String),

    #[error("machine devices: {0}")]
    Devices(String),

    #[error("disk {disk} of machine {machine}: {reason}")]
    Disk {
        machine: String,
        disk: String,
        reason: String,
    },

    #[error("cannot keep the disk image {}: {source}", path.display())]
    KeepDisk { path: PathBuf, source: io::Error },

    /// Saving or restoring a machine's state failed (KVM refused part of it, or the saved
    /// state does not fit the machine).
    #[error("machine state: {0}")]
    Snapshot(String),

    /// A template or snapshot file that cannot be used.
    #[error("{}: {reason}", path.display())]
    SnapshotFile { path: PathBuf, reason: String },

    #[error("cannot write the profile {}: {reason}", path.display())]
    Profile { path: PathBuf, reason: String },

    #[error("cannot read the profile {}: {reason}", path.display())]
    ProfileRead { path: PathBuf, reason: String },

    /// The guest did not reach the point a template is taken at.
    #[error("building the machine template failed: {0}")]
    TemplateBoot(String),
}

impl Error {
    /// Adapter for `map_err` on a KVM ioctl: `vcpu.run().map_err(Error::kvm("KVM_RUN"))`.
    pub fn kvm(op: &'static str) -> impl Fn(errno::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }
}

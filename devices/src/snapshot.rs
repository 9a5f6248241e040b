//! Saving a device's state and restoring it into a device built the same way, for machine
//! templates and snapshots.
//!
//! The VMM saves at a VM exit, after draining [`IrqLines`](crate::irq::IrqLines) into the PIC
//! (raised but undrained edges are not part of any device's state) and the consoles' output. It
//! restores into freshly constructed devices: per-machine identity given at construction (a MAC,
//! a disk serial, the wall clock base) stays the fresh device's, while everything the guest can
//! observe later comes from the saved state. Statistics and error lists describe a run, not the
//! machine, so they are neither saved nor restored.

use thiserror::Error;
use vm_memory::GuestMemoryMmap;

/// A device whose state can be saved and restored.
pub trait Snapshot {
    /// Plain data, versioned by its shape: an older or newer shape fails to deserialize.
    type State: serde::Serialize + serde::de::DeserializeOwned + Clone + std::fmt::Debug + PartialEq;

    fn save(&self) -> Self::State;

    /// Restores into a device built like the one saved; refuses state that does not fit (e.g. a
    /// queue outside `mem`, a size mismatch) without panicking and without half-applying.
    fn restore(&mut self, state: &Self::State, mem: &GuestMemoryMmap) -> Result<(), SnapshotError>;
}

/// Why saved state cannot be restored; the device is left as it was.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// Fixed at construction and different here (a disk's capacity, a NIC's offloads).
    #[error("saved {what} {saved} differs from this device's {built}")]
    Mismatch {
        what: &'static str,
        saved: String,
        built: String,
    },
    #[error("saved queue {queue}: {source}")]
    Queue {
        queue: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("saved queue {0} is ready but its rings lie outside guest memory")]
    QueueOutsideMemory(u16),
    /// Values no device in operation could have (an address outside memory, a bit out of range).
    #[error("saved state is invalid: {0}")]
    Invalid(String),
    /// The saved bytes do not decode into state of this shape.
    #[error("saved state does not decode: {0}")]
    Decode(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl SnapshotError {
    /// Wraps the error of whatever format the state was stored in (e.g. `serde_json::Error`).
    pub fn decode(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Decode(Box::new(error))
    }

    pub(crate) fn mismatch(what: &'static str, saved: impl ToString, built: impl ToString) -> Self {
        Self::Mismatch {
            what,
            saved: saved.to_string(),
            built: built.to_string(),
        }
    }
}

//! The disk's two error types: what a request can answer the guest, and what can go wrong when
//! the host sets a disk up.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why a request failed. This is a result the guest sees (virtio-blk `IOERR`/`UNSUPP`), not an
/// error of the code that drives the disk: every request, however malformed, completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum IoError {
    /// The request reaches beyond the last sector (or its end overflows).
    #[error("request reaches beyond the end of the disk")]
    OutOfRange,
    /// The request is malformed: no sectors, data that is not whole sectors, or more than
    /// [`MAX_REQUEST_BYTES`](super::MAX_REQUEST_BYTES).
    #[error("malformed request: empty, not whole sectors, or larger than the request limit")]
    Invalid,
    /// An injected fault: a latent sector error on read, or a failing write.
    #[error("medium error")]
    Medium,
    /// The base image file could not be read on the host (it shrank or vanished after it was
    /// opened). Unlike the others this is a host problem, not a modelled one: the run is no
    /// longer a function of its seed, and the VMM should report it.
    #[error("the base image file could not be read on the host")]
    BaseUnreadable,
}

/// Why a disk could not be set up from the host's files.
#[derive(Debug, Error)]
pub enum DiskError {
    /// The base image could not be opened or inspected.
    #[error("cannot open disk image {}: {source}", .path.display())]
    Open {
        /// The file that was asked for.
        path: PathBuf,
        /// What the host said.
        source: io::Error,
    },
    /// The base image is a directory, device or pipe rather than a regular file.
    #[error("disk image {} is not a regular file", .path.display())]
    NotAFile {
        /// The file that was asked for.
        path: PathBuf,
    },
    /// A disk size was asked for that would hide part of the base image.
    #[error(
        "a disk of {requested} sectors is smaller than its base image {} ({file_sectors} sectors)",
        .path.display()
    )]
    SmallerThanBase {
        /// The base image file.
        path: PathBuf,
        /// The size asked for, in sectors.
        requested: u64,
        /// The size of the file, in sectors (rounded up).
        file_sectors: u64,
    },
}

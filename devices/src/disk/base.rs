//! The base image: the read-only contents a disk starts from.
//!
//! A disk never writes its base; everything written lives in the disk's overlay. A base backed by
//! a host file is read with positional reads, so nothing depends on a shared file cursor and the
//! file is never loaded whole.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{DiskError, SECTOR_BYTES};

/// Read-only starting contents of a disk: all zeros, or a host file rounded up to whole sectors
/// with the tail reading as zeros.
#[derive(Debug)]
pub struct BaseImage {
    file: Option<BaseFile>,
    sectors: u64,
}

/// The host file behind a base image.
#[derive(Debug)]
struct BaseFile {
    file: File,
    path: PathBuf,
    /// Length in bytes when opened; reads beyond it are zeros.
    len: u64,
    /// Device and inode, to refuse writing an image over the base itself.
    identity: (u64, u64),
}

impl BaseImage {
    /// A blank disk of `sectors` sectors.
    pub fn zeros(sectors: u64) -> Self {
        Self {
            file: None,
            sectors,
        }
    }

    /// A disk starting from the contents of the regular file at `path`, its size rounded up to
    /// whole sectors. Fails, naming the path, if the file cannot be opened or is not a regular
    /// file (checked before opening, so a FIFO cannot block the caller).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DiskError> {
        let path = path.as_ref();
        let open_error = |source| DiskError::Open {
            path: path.to_owned(),
            source,
        };
        if !fs::metadata(path).map_err(open_error)?.is_file() {
            return Err(DiskError::NotAFile {
                path: path.to_owned(),
            });
        }
        let file = File::open(path).map_err(open_error)?;
        let metadata = file.metadata().map_err(open_error)?;
        let len = metadata.len();
        Ok(Self {
            sectors: len.div_ceil(SECTOR_BYTES),
            file: Some(BaseFile {
                file,
                path: path.to_owned(),
                len,
                identity: (metadata.dev(), metadata.ino()),
            }),
        })
    }

    /// The same contents on a disk of `sectors` sectors, the part beyond the file reading as
    /// zeros: a guest can be given room to grow. A size that would hide part of the file is an
    /// error.
    pub fn with_sectors(self, sectors: u64) -> Result<Self, DiskError> {
        if let Some(file) = &self.file {
            let file_sectors = file.len.div_ceil(SECTOR_BYTES);
            if sectors < file_sectors {
                return Err(DiskError::SmallerThanBase {
                    path: file.path.clone(),
                    requested: sectors,
                    file_sectors,
                });
            }
        }
        Ok(Self { sectors, ..self })
    }

    /// Size of the disk in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// The host file the contents come from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|file| file.path.as_path())
    }

    /// Fills `buf` with the base contents starting at `sector`. The caller has checked the range
    /// against the disk; bytes beyond the file are zeros.
    pub(crate) fn read_into(&self, sector: u64, buf: &mut [u8]) -> io::Result<()> {
        let in_file = self.file_bytes_at(sector, buf.len());
        if let (Some(file), Some((offset, len))) = (&self.file, in_file) {
            file.file.read_exact_at(&mut buf[..len], offset)?;
            buf[len..].fill(0);
        } else {
            buf.fill(0);
        }
        Ok(())
    }

    /// Offset and length of the part of `len` bytes at `sector` that lies inside the file.
    fn file_bytes_at(&self, sector: u64, len: usize) -> Option<(u64, usize)> {
        let file = self.file.as_ref()?;
        let offset = sector.checked_mul(SECTOR_BYTES)?;
        let remaining = file.len.checked_sub(offset).filter(|&n| n > 0)?;
        let len = usize::try_from(remaining).map_or(len, |remaining| remaining.min(len));
        Some((offset, len))
    }

    /// Copies the file's contents to the start of `out`, skipping all-zero chunks (the caller
    /// has already sized `out`, so they read as zeros and stay sparse).
    pub(crate) fn copy_nonzero_into(&self, out: &File) -> io::Result<()> {
        const CHUNK: usize = 1 << 20;
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut chunk = vec![0u8; CHUNK];
        let mut offset = 0u64;
        while offset < file.len {
            let len = usize::try_from(file.len - offset).map_or(CHUNK, |left| left.min(CHUNK));
            let data = &mut chunk[..len];
            file.file.read_exact_at(data, offset)?;
            if data.iter().any(|&byte| byte != 0) {
                out.write_all_at(data, offset)?;
            }
            offset += len as u64;
        }
        Ok(())
    }

    /// Whether `path` names the base file itself (so writing an image there would destroy it).
    pub(crate) fn is_file_at(&self, path: &Path) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        fs::metadata(path).is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == file.identity)
    }
}

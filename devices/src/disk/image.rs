//! Writing a disk's visible contents to a host file, to inspect or reuse as a base image.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::cache::SectorData;
use super::{Disk, SECTOR_BYTES, SECTOR_SIZE};

/// Contiguous sectors are gathered into writes of up to this many bytes.
const RUN_BYTES: usize = 1 << 20;

impl Disk {
    /// Writes everything visible now (base, durable and cached writes) to `path` as a plain
    /// image of [`Disk::sectors`] sectors, replacing the file. The file is sized first and only
    /// non-zero base chunks and written sectors are copied, so a large, mostly empty disk is
    /// quick and stays sparse. Refuses to overwrite the disk's own base image.
    pub fn write_image(&self, path: &Path) -> io::Result<()> {
        if self.base.is_file_at(path) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is this disk's base image", path.display()),
            ));
        }
        let size = self.sectors().checked_mul(SECTOR_BYTES).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "disk too large for an image")
        })?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        self.base.copy_nonzero_into(&file)?;
        for layer in self.store.layers() {
            write_sector_runs(&file, layer)?;
        }
        Ok(())
    }
}

/// Writes the sectors of `layer` into `file`, one positional write per run of contiguous
/// sectors (up to [`RUN_BYTES`]).
fn write_sector_runs(file: &File, layer: &BTreeMap<u64, SectorData>) -> io::Result<()> {
    let mut run = Vec::with_capacity(RUN_BYTES);
    let mut run_start = 0u64;
    for (&sector, data) in layer {
        let contiguous = run_start.checked_add((run.len() / SECTOR_SIZE) as u64) == Some(sector);
        if !run.is_empty() && (!contiguous || run.len() >= RUN_BYTES) {
            write_run(file, run_start, &run)?;
            run.clear();
        }
        if run.is_empty() {
            run_start = sector;
        }
        run.extend_from_slice(&data[..]);
    }
    if !run.is_empty() {
        write_run(file, run_start, &run)?;
    }
    Ok(())
}

fn write_run(file: &File, sector: u64, data: &[u8]) -> io::Result<()> {
    let offset = sector.checked_mul(SECTOR_BYTES).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "sector beyond any file offset")
    })?;
    file.write_all_at(data, offset)
}

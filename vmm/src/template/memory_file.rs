//! A saved machine's guest RAM on disk (a template's `memory`, a world snapshot's
//! `NAME.memory`): written sparse, checked against its BLAKE3 when opened, and mapped back
//! copy on write.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::error::{Error, Result};

const PAGE: usize = 4096;
/// How much of the file one read, or one run of zeros fed to the hash, covers.
const CHUNK: usize = 1 << 20;

/// Guest memory into `path`, skipping all-zero pages (the file is sparse); returns the BLAKE3
/// of the memory, hashed on the same pass.
pub(crate) fn write_sparse_memory(
    path: &Path,
    mem: &GuestMemoryMmap,
    mem_size: u64,
) -> Result<String> {
    let io_error = |e: std::io::Error| Error::SnapshotFile {
        path: path.to_path_buf(),
        reason: format!("cannot write: {e}"),
    };
    let file = File::create(path).map_err(io_error)?;
    file.set_len(mem_size).map_err(io_error)?;
    let mut hash = blake3::Hasher::new();
    let mut page = [0u8; PAGE];
    let mut addr = 0;
    while addr < mem_size {
        mem.read_slice(&mut page, GuestAddress(addr))
            .map_err(|e| Error::GuestMemory(e.to_string()))?;
        hash.update(&page);
        if page.iter().any(|&b| b != 0) {
            file.write_all_at(&page, addr).map_err(io_error)?;
        }
        addr += PAGE as u64;
    }
    file.sync_all().map_err(io_error)?;
    Ok(hash.finalize().to_hex().to_string())
}

/// Opens a saved memory file, checking its size and hash.
pub(crate) fn open_memory(path: &Path, mem_size: u64, blake3_hex: &str) -> Result<File> {
    let refuse = |reason: String| Error::SnapshotFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| refuse(format!("cannot open: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| refuse(format!("cannot read: {e}")))?
        .len();
    if len != mem_size {
        return Err(refuse(format!(
            "holds {len} bytes of guest memory, the template says {mem_size} (truncated?)"
        )));
    }
    let hash = hash_sparse(&file, len).map_err(|e| refuse(format!("cannot read: {e}")))?;
    if hash.to_hex().as_str() != blake3_hex {
        return Err(refuse("guest memory is damaged (its hash differs)".into()));
    }
    Ok(file)
}

/// The BLAKE3 of the file's `len` bytes, reading only where it holds data: its holes are
/// hashed as the zeros they read as, without reading them. Most of a guest's RAM is never
/// written (280 MiB of an etcd template's 384 MiB are holes), and reading a hole has the file
/// system clear a page of page cache for it.
fn hash_sparse(file: &File, len: u64) -> std::io::Result<blake3::Hash> {
    let mut hash = blake3::Hasher::new();
    let zeros = vec![0u8; CHUNK];
    let mut chunk = vec![0u8; CHUNK];
    let mut at = 0;
    while at < len {
        let data = seek(file, at, libc::SEEK_DATA)?.unwrap_or(len).min(len);
        for_each_chunk(at, data, |_, n| {
            hash.update(&zeros[..n]);
            Ok(())
        })?;
        if data == len {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        for_each_chunk(data, hole, |offset, n| {
            file.read_exact_at(&mut chunk[..n], offset)?;
            hash.update(&chunk[..n]);
            Ok(())
        })?;
        at = hole;
    }
    Ok(hash.finalize())
}

/// Calls `f(offset, n)` for consecutive pieces of `[from, to)` of at most [`CHUNK`] bytes.
fn for_each_chunk(
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, usize) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut offset = from;
    while offset < to {
        let n = (to - offset).min(CHUNK as u64) as usize;
        f(offset, n)?;
        offset += n as u64;
    }
    Ok(())
}

/// `lseek(2)` with `SEEK_DATA` or `SEEK_HOLE` from `offset`; `None` where there is no more
/// data (`ENXIO`).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek only reads its arguments; the descriptor belongs to `file`, which is open
    // for the duration of the call. Moving its offset is harmless: every read here is
    // positioned (pread).
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at >= 0 {
        return Ok(Some(at as u64));
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(error),
    }
}

/// Maps `file` as guest RAM, private and copy on write: the machine's writes stay its own,
/// and machines started from one template share the pages they have not written.
pub(crate) fn map_private(file: &File, mem_size: u64) -> Result<GuestMemoryMmap> {
    let alloc_error = |reason: String| Error::MemoryAlloc { mem_size, reason };
    let size = usize::try_from(mem_size).map_err(|e| alloc_error(e.to_string()))?;
    let file = file.try_clone().map_err(|e| alloc_error(e.to_string()))?;
    let region = MmapRegion::build(
        Some(FileOffset::new(file, 0)),
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_NORESERVE,
    )
    .map_err(|e| alloc_error(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| alloc_error("the region does not fit the address space".into()))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| alloc_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::tests::scratch;

    #[test]
    fn memory_is_written_sparse_and_checked_when_opened() {
        let dir = scratch("memory");
        let size = 1u64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        mem.write_slice(b"kernel", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"stack", GuestAddress(0xf_f000)).unwrap();
        let path = dir.join("memory");
        let hash = write_sparse_memory(&path, &mem, size).unwrap();
        let file = open_memory(&path, size, &hash).unwrap();

        // Mapped back privately: the same bytes, and writes stay out of the file.
        let mapped = map_private(&file, size).unwrap();
        let mut word = [0u8; 6];
        mapped.read_slice(&mut word, GuestAddress(0x1000)).unwrap();
        assert_eq!(&word, b"kernel");
        mapped.write_slice(b"CHANGE", GuestAddress(0x1000)).unwrap();
        open_memory(&path, size, &hash).expect("the file is unchanged");
        let again = map_private(&file, size).unwrap();
        again.read_slice(&mut word, GuestAddress(0x1000)).unwrap();
        assert_eq!(&word, b"kernel");

        // Only the two written pages hold data (where the file system keeps holes).
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(blocks < size / 2, "{blocks} bytes allocated for two pages");

        let refused = |e: Error| e.to_string();
        let wrong = open_memory(&path, size * 2, &hash).map(|_| ());
        assert!(refused(wrong.unwrap_err()).contains("truncated"));
        let damaged = open_memory(&path, size, &"0".repeat(64)).map(|_| ());
        assert!(refused(damaged.unwrap_err()).contains("damaged"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_hash_skips_holes_but_not_what_is_written_into_them() {
        let dir = scratch("holes");
        let path = dir.join("memory");
        // Data at the start, in the middle across a chunk boundary, and in the last page.
        let len = 3 * CHUNK as u64 + 8 * PAGE as u64;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(len).unwrap();
        let mut content = vec![0u8; len as usize];
        for (at, bytes) in [
            (0u64, &b"head"[..]),
            (CHUNK as u64 - 2, b"across"),
            (len - 3, b"end"),
        ] {
            file.write_all_at(bytes, at).unwrap();
            content[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        }
        let whole = blake3::hash(&content);
        assert_eq!(hash_sparse(&file, len).unwrap(), whole);

        // A byte written into a hole later is data like any other.
        file.write_all_at(b"x", 2 * CHUNK as u64 + 5).unwrap();
        assert_ne!(hash_sparse(&file, len).unwrap(), whole);
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! Host-side ext4 disk images: a directory's tree (or nothing) as a reproducible ext4 filesystem,
//! built once with Debian's `mkfs.ext4 -d` and then found in a content-addressed cache.
//!
//! The image depends only on what [`ext4_image`] hashes into its cache key: the size, the mkfs
//! options and configuration, the e2fsprogs version, and the tree's names, file types, permission
//! bits, contents, symlink targets, device numbers, hard-link structure and extended attributes.
//! Building the same tree twice gives byte-identical images, on any host with the same
//! e2fsprogs version:
//!
//! - mkfs reads no host configuration: `MKE2FS_CONFIG` points at [`MKE2FS_CONF`], the environment
//!   is cleared, and every option that would otherwise be random or the time of the build is
//!   fixed (see [`MKFS_OPTIONS`] and [`build`]);
//! - `mkfs.ext4 -d` copies each source file's owner and access, change and modification times into
//!   its inode, and no option turns that off (the change time cannot even be set on the source).
//!   So after mkfs, [`normalize_inodes`] sets every inode that came from the tree to owner 0:0 and
//!   all its times to [`FAKE_TIME`], recomputing the inode checksums.
//!
//! Images are written to a temporary file in the cache directory and published with one
//! `rename`, so a crash or a concurrent build never leaves a half-written image under a key.

use std::ffi::{CString, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// The ext4 block size of every image (`-b 4096`), and the granularity of image sizes.
pub const BLOCK_SIZE: u64 = 4096;

/// The smallest image [`ext4_image`] builds. Below [`MIN_JOURNAL_SIZE`] the filesystem has no
/// journal.
pub const MIN_SIZE: u64 = 1 << 20;

/// mkfs gives an ext4 filesystem a journal only from 2048 blocks (8 MiB) on; smaller images
/// have none, so a crash leaves them for `fsck` instead of a journal replay.
pub const MIN_JOURNAL_SIZE: u64 = 8 << 20;

/// What [`size_for_tree`] counts for every entry of a tree besides its data: the disk space
/// mkfs gives each inode (`inode_ratio` in [`MKE2FS_CONF`]), so the filesystem has an inode
/// for every entry.
const BYTES_PER_INODE: u64 = 16 << 10;

/// The fixed part of [`size_for_tree`]'s headroom: room for the journal, which is 4 MiB below
/// 128 MiB and 16 MiB below 1 GiB (a quarter of the tree covers it beyond), and the rest of
/// ext4's metadata in small filesystems.
const TREE_HEADROOM: u64 = 16 << 20;

/// Bump when anything about how images are built changes (options, configuration,
/// normalisation), so old cache entries are no longer found.
const FORMAT_VERSION: &str = "simvm ext4 image v1";

/// The time (Unix seconds) written for every time stamp in the image: the filesystem's creation
/// and write times (through `E2FSPROGS_FAKE_TIME`) and every inode's times. 2025-01-01 00:00:00
/// UTC, the guest kernel's build time stamp; before the guest clock's default start, so guest
/// programs never see files from the future.
pub const FAKE_TIME: u32 = 1_735_689_600;

/// The mke2fs configuration every image is built with (`MKE2FS_CONFIG`), instead of the host's
/// `/etc/mke2fs.conf`, which differs between distributions and releases. The values are Debian
/// 12's defaults for ext4: 256-byte inodes (room for nanosecond times and in-inode extended
/// attributes), one inode per 16 KiB, and the features of a current ext4 (extents, a journal,
/// flexible block groups, 64-bit block numbers, metadata checksums). The usage type `default` is
/// defined (and selected with `-T default`) so mke2fs never picks a size-dependent one
/// (`small` and `floppy` would switch to 1 KiB blocks and more inodes).
pub const MKE2FS_CONF: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tdefault = {
\t\tinode_ratio = 16384
\t}
";

/// The fixed `mkfs.ext4` options (the UUID and hash seed, derived from the cache key, the source
/// directory and the image file are added by [`build`]). Why each:
///
/// - `-q`: no progress output; mkfs's stderr is kept only to report a failure.
/// - `-F`: the target is a regular file, not a block device; build without asking.
/// - `-b 4096`: the block size, fixed rather than chosen by size (which would give 1 KiB
///   blocks below 512 MiB), and equal to the guest's page size.
/// - `-T default`: the usage type, fixed rather than chosen by size, so the inode ratio and
///   block size do not jump at size thresholds (defined in [`MKE2FS_CONF`]).
/// - `-L data`: a fixed volume label (the guest mounts by device name, the label is for
///   humans and `blkid`).
/// - `-m 0`: no blocks reserved for root; the guest's command runs as root anyway, and a
///   reserve would only make small disks smaller and "disk full" harder to reason about.
/// - `-E lazy_itable_init=0,lazy_journal_init=0`: mkfs zeroes the inode tables and the journal
///   itself. Otherwise the guest kernel would start `ext4lazyinit`, a kernel thread zeroing them
///   in the background at mount, which adds guest work and disk traffic to every boot.
/// - `-E nodiscard`: the image is a fresh sparse file, there is nothing to discard.
/// - `-E root_owner=0:0`: the root directory belongs to root, not to whoever runs simvm.
const MKFS_OPTIONS: &[&str] = &[
    "-q",
    "-F",
    "-b",
    "4096",
    "-T",
    "default",
    "-L",
    "data",
    "-m",
    "0",
    "-E",
    "lazy_itable_init=0,lazy_journal_init=0,nodiscard,root_owner=0:0",
];

/// The Debian package that provides `mkfs.ext4` and `e2fsck`.
pub const E2FSPROGS_PACKAGE: &str = "e2fsprogs";

/// Checks that the image at `path` starts with an ext4 superblock (its magic, 0xEF53 at byte
/// 1080), so that a mount the guest would fail (and a run that passes without its files) is an
/// error before the run.
pub fn check_ext4(path: &Path) -> std::result::Result<(), DiskImageError> {
    use std::io::{Seek, SeekFrom};
    let read_error = |source| DiskImageError::Read {
        path: path.to_owned(),
        source,
    };
    let not_ext4 = || DiskImageError::NotExt4 {
        path: path.to_owned(),
    };
    let mut magic = [0u8; 2];
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    file.seek(SeekFrom::Start(1080)).map_err(read_error)?;
    match file.read_exact(&mut magic) {
        Ok(()) if magic == [0x53, 0xef] => Ok(()),
        // Another magic, or a file shorter than a superblock.
        Ok(()) => Err(not_ext4()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(not_ext4()),
        Err(e) => Err(read_error(e)),
    }
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    #[error("the disk image directory {} does not exist", path.display())]
    DirMissing { path: PathBuf },

    #[error("{} holds no ext4 file system, and a mounted disk is ext4: make it with mkfs.ext4, or leave out `mount` to give the guest the raw device", path.display())]
    NotExt4 { path: PathBuf },

    #[error("{} is not a directory (an ext4 disk image is built from a directory's tree)", path.display())]
    NotADirectory { path: PathBuf },

    #[error("cannot read {} for the disk image: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error(
        "disk size {size} bytes is not a multiple of {BLOCK_SIZE} bytes (the ext4 block size)"
    )]
    SizeNotAligned { size: u64 },

    #[error("disk size {size} bytes is too small: an ext4 disk image needs at least {MIN_SIZE} bytes (1 MiB)")]
    SizeTooSmall { size: u64 },

    #[error(
        "mkfs.ext4 is not installed; simvm builds ext4 disk images with it. Install the Debian \
         package {E2FSPROGS_PACKAGE}: `sudo apt-get install {E2FSPROGS_PACKAGE}`"
    )]
    MkfsMissing,

    /// `apt-get` failed while installing e2fsprogs; says which command and why.
    #[error("installing {E2FSPROGS_PACKAGE} (for mkfs.ext4) failed: {0}")]
    Install(String),

    #[error("cannot run {}: {source}", program.display())]
    Spawn { program: PathBuf, source: io::Error },

    #[error("{0}")]
    Mkfs(Box<MkfsFailure>),

    #[error("disk image cache {}: {source}", path.display())]
    Cache { path: PathBuf, source: io::Error },

    #[error("the ext4 image mkfs.ext4 wrote is not what simvm expects: {0}")]
    Format(String),
}

/// A failed `mkfs.ext4` run (boxed in [`DiskImageError::Mkfs`] to keep the error small).
#[derive(Debug, thiserror::Error)]
#[error(
    "mkfs.ext4 failed ({status}) building a {size}-byte ext4 image{}{}:\n{stderr}",
    dir.as_ref().map(|d| format!(" of {}", d.display())).unwrap_or_default(),
    if dir.is_some() { " (does the tree fit? a bigger size may help)" } else { "" }
)]
pub struct MkfsFailure {
    pub size: u64,
    pub dir: Option<PathBuf>,
    /// The exit status, or what else went wrong.
    pub status: String,
    /// The last lines of mkfs's stderr.
    pub stderr: String,
}

type Result<T> = std::result::Result<T, DiskImageError>;

/// Builds (or finds in the cache) an ext4 image of `size` bytes holding `dir`'s tree (None: empty
/// filesystem).
///
/// The image is `cache_dir/disks/<key>.img`, where the key is a blake3 hash over everything the
/// image depends on (see the module documentation); callers must treat it as read-only. `size`
/// must be a multiple of [`BLOCK_SIZE`] and at least [`MIN_SIZE`]; the filesystem has a journal
/// from [`MIN_JOURNAL_SIZE`] on. Every file in the image belongs to root (uid and gid 0) and has
/// all its times at [`FAKE_TIME`]; permission bits (including setuid, setgid and sticky) are the
/// source's.
///
/// Needs `mkfs.ext4` (Debian package `e2fsprogs`): when it is missing and simvm runs as root, it
/// is installed with `apt-get`; otherwise the error says what to install.
pub fn ext4_image(dir: Option<&Path>, size: u64, cache_dir: &Path) -> Result<PathBuf> {
    if !size.is_multiple_of(BLOCK_SIZE) {
        return Err(DiskImageError::SizeNotAligned { size });
    }
    if size < MIN_SIZE {
        return Err(DiskImageError::SizeTooSmall { size });
    }
    if let Some(dir) = dir {
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(DiskImageError::NotADirectory {
                    path: dir.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DiskImageError::DirMissing {
                    path: dir.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(DiskImageError::Read {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
    let mkfs = ensure_mkfs()?;
    let key = cache_key(dir, size, &mkfs_version(&mkfs)?)?;
    let disks = cache_dir.join("disks");
    let image = disks.join(format!("{}.img", &key.to_hex()[..32]));
    if image.is_file() {
        return Ok(image);
    }
    fs::create_dir_all(&disks).map_err(|source| DiskImageError::Cache {
        path: disks.clone(),
        source,
    })?;
    build(&mkfs, dir, size, &key, &image)?;
    Ok(image)
}

/// A size for an ext4 image of `dir`'s tree that holds it with room to spare: each regular
/// file's data in whole [`BLOCK_SIZE`] blocks, plus [`BYTES_PER_INODE`] for every entry (the
/// directory itself included), plus a quarter of that for ext4's metadata and the guest's writes,
/// plus 16 MiB ([`TREE_HEADROOM`]), rounded up to a whole MiB. It depends only on the tree's
/// entries and file lengths, so the same tree gets the same size on every host.
pub fn size_for_tree(dir: &Path) -> Result<u64> {
    let used = tree_usage(dir, true)?;
    let size = used.saturating_add(used / 4).saturating_add(TREE_HEADROOM);
    Ok(size.div_ceil(1 << 20).saturating_mul(1 << 20))
}

/// What `path` and everything under it take on an ext4 image: see [`size_for_tree`]. The top
/// directory is followed if it is a symlink (as mkfs does); nothing below it is.
fn tree_usage(path: &Path, top: bool) -> Result<u64> {
    let read_err = |source| DiskImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = if top {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    }
    .map_err(read_err)?;
    let mut used = BYTES_PER_INODE;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            used = used.saturating_add(tree_usage(&entry.path(), false)?);
        }
    } else if meta.is_file() {
        let blocks = meta.len().div_ceil(BLOCK_SIZE);
        used = used.saturating_add(blocks.saturating_mul(BLOCK_SIZE));
    }
    Ok(used)
}

/// The key over everything the image depends on. Every item is tagged and length-prefixed, so
/// no two different inputs hash the same byte stream.
fn cache_key(dir: Option<&Path>, size: u64, mkfs_version: &str) -> Result<blake3::Hash> {
    let mut key = KeyWriter(blake3::Hasher::new());
    key.item(b"format", FORMAT_VERSION.as_bytes());
    key.item(b"size", &size.to_le_bytes());
    key.item(b"options", MKFS_OPTIONS.join(" ").as_bytes());
    key.item(b"config", MKE2FS_CONF.as_bytes());
    key.item(b"time", &FAKE_TIME.to_le_bytes());
    key.item(b"mkfs", mkfs_version.as_bytes());
    match dir {
        None => key.item(b"empty", b""),
        Some(dir) => {
            let mut links = Vec::new();
            hash_tree(&mut key, dir, Path::new(""), &mut links)?;
        }
    }
    Ok(key.0.finalize())
}

struct KeyWriter(blake3::Hasher);

impl KeyWriter {
    fn item(&mut self, tag: &[u8], value: &[u8]) {
        self.0.update(&(tag.len() as u64).to_le_bytes());
        self.0.update(tag);
        self.0.update(&(value.len() as u64).to_le_bytes());
        self.0.update(value);
    }
}

/// Hashes `root/rel` and, for a directory, its entries in byte order of their names, depth
/// first. `links` holds `(dev, ino, rel)` of the multiply linked files seen so far: mkfs turns a
/// second path to the same source inode into a hard link, so the key records that too.
fn hash_tree(
    key: &mut KeyWriter,
    root: &Path,
    rel: &Path,
    links: &mut Vec<(u64, u64, PathBuf)>,
) -> Result<()> {
    let path = root.join(rel);
    let read_err = |source| DiskImageError::Read {
        path: path.clone(),
        source,
    };
    // The top directory is followed if it is a symlink (as mkfs does); nothing below it is.
    let meta = if rel.as_os_str().is_empty() {
        fs::metadata(&path)
    } else {
        fs::symlink_metadata(&path)
    }
    .map_err(read_err)?;
    let kind = meta.file_type();
    key.item(b"path", rel.as_os_str().as_bytes());
    key.item(b"mode", &(meta.mode() & 0o7777).to_le_bytes());
    hash_xattrs(key, &path)?;
    if kind.is_dir() {
        key.item(b"dir", b"");
        let mut names: Vec<OsString> = fs::read_dir(&path)
            .map_err(read_err)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(read_err)?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            hash_tree(key, root, &rel.join(name), links)?;
        }
        key.item(b"end", b"");
    } else if kind.is_symlink() {
        let target = fs::read_link(&path).map_err(read_err)?;
        key.item(b"symlink", target.as_os_str().as_bytes());
    } else if let Some(first) = hard_link(links, &meta, rel) {
        key.item(b"hardlink", first.as_os_str().as_bytes());
    } else if kind.is_file() {
        let mut file = File::open(&path).map_err(read_err)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut len = 0u64;
        key.item(b"file", b"");
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            };
            key.0.update(&buf[..n]);
            len += n as u64;
        }
        key.item(b"length", &len.to_le_bytes());
    } else if kind.is_char_device() || kind.is_block_device() {
        let tag: &[u8] = if kind.is_char_device() {
            b"chr"
        } else {
            b"blk"
        };
        key.item(tag, &meta.rdev().to_le_bytes());
    } else if kind.is_fifo() {
        key.item(b"fifo", b"");
    } else if kind.is_socket() {
        key.item(b"socket", b"");
    }
    Ok(())
}

/// For a second or later path to a multiply linked non-directory, the first path to it;
/// otherwise None, and the path is remembered if other paths may follow.
fn hard_link(
    links: &mut Vec<(u64, u64, PathBuf)>,
    meta: &fs::Metadata,
    rel: &Path,
) -> Option<PathBuf> {
    if meta.nlink() < 2 {
        return None;
    }
    let (dev, ino) = (meta.dev(), meta.ino());
    if let Some((_, _, first)) = links.iter().find(|(d, i, _)| (*d, *i) == (dev, ino)) {
        return Some(first.clone());
    }
    links.push((dev, ino, rel.to_path_buf()));
    None
}

/// Hashes the extended attributes of `path` (not following a symlink), sorted by name:
/// `mkfs.ext4 -d` copies them all (on SELinux hosts every file has `security.selinux`).
fn hash_xattrs(key: &mut KeyWriter, path: &Path) -> Result<()> {
    let read_err = |source| DiskImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| read_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let list = xattr_call(|buf, len| {
        // SAFETY: c_path is NUL-terminated; buf is valid for len bytes (or null with len 0).
        unsafe { libc::llistxattr(c_path.as_ptr(), buf.cast(), len) }
    });
    let list = match list {
        Ok(list) => list,
        // No extended attributes on this filesystem: there is nothing for mkfs to copy.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(read_err(e)),
    };
    let mut names: Vec<&[u8]> = list.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    names.sort();
    for name in names {
        let c_name = CString::new(name).expect("split at NUL bytes");
        let value = xattr_call(|buf, len| {
            // SAFETY: both strings are NUL-terminated; buf is valid for len bytes.
            unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.cast(), len) }
        })
        .map_err(read_err)?;
        key.item(b"xattr", name);
        key.item(b"value", &value);
    }
    Ok(())
}

/// Runs a size-then-fill xattr call, retrying if the value grew in between.
fn xattr_call(mut call: impl FnMut(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let len = call(std::ptr::null_mut(), 0);
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; len as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

/// `mkfs.ext4`, installing e2fsprogs first when it is missing and we are root.
fn ensure_mkfs() -> Result<PathBuf> {
    if let Some(path) = find_program("mkfs.ext4") {
        return Ok(path);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DiskImageError::MkfsMissing);
    }
    eprintln!("simvm: installing {E2FSPROGS_PACKAGE} (Debian package) for mkfs.ext4");
    let apt = |args: &[&str]| -> Result<()> {
        let command = format!("apt-get {}", args.join(" "));
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| DiskImageError::Install(format!("`{command}`: {e}")))?;
        if !out.status.success() {
            return Err(DiskImageError::Install(format!(
                "`{command}`: {}: {}",
                out.status,
                tail(&out.stderr)
            )));
        }
        Ok(())
    };
    apt(&["update", "-q"])?;
    apt(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        E2FSPROGS_PACKAGE,
    ])?;
    find_program("mkfs.ext4").ok_or(DiskImageError::MkfsMissing)
}

/// Finds an e2fsprogs program on `PATH` or in the sbin directories (which a normal user's
/// `PATH` often lacks).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

/// `mkfs.ext4 -V`: the mke2fs and e2fsprogs library versions, part of the cache key.
fn mkfs_version(mkfs: &Path) -> Result<String> {
    let out = Command::new(mkfs)
        .arg("-V")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DiskImageError::Spawn {
            program: mkfs.to_path_buf(),
            source,
        })?;
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(DiskImageError::Spawn {
            program: mkfs.to_path_buf(),
            source: io::Error::other(format!("`-V` printed no version ({})", out.status)),
        });
    }
    Ok(text)
}

/// The last lines of a program's output, for an error message.
fn tail(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(15);
    let mut out = lines[start..].join("\n");
    if out.len() > 2000 {
        let cut = out.len() - 2000;
        let cut = (cut..out.len())
            .find(|&i| out.is_char_boundary(i))
            .unwrap_or(0);
        out = format!("...{}", &out[cut..]);
    }
    out
}

/// A temporary file removed on drop unless kept.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Runs mkfs into a temporary file next to `image`, normalises it and renames it into place.
fn build(
    mkfs: &Path,
    dir: Option<&Path>,
    size: u64,
    key: &blake3::Hash,
    image: &Path,
) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let disks = image.parent().expect("the image is in the disks directory");
    let stem = format!(
        ".{}.{}.{}",
        &key.to_hex()[..32],
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let cache_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskImageError::Cache { path, source }
    };

    let conf_path = disks.join(format!("{stem}.conf"));
    let _conf_guard = TempFile(Some(conf_path.clone()));
    fs::write(&conf_path, MKE2FS_CONF).map_err(cache_err(&conf_path))?;

    let tmp_path = disks.join(format!("{stem}.tmp"));
    let mut tmp_guard = TempFile(Some(tmp_path.clone()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(cache_err(&tmp_path))?;
    file.set_len(size).map_err(cache_err(&tmp_path))?;

    // The UUID (-U) and the directory hash seed (-E hash_seed) are random by default; both
    // come from the key here. The UUID also seeds every metadata checksum.
    let bytes = key.as_bytes();
    let uuid = format_uuid(bytes[..16].try_into().expect("16 bytes"));
    let hash_seed = format_uuid(bytes[16..].try_into().expect("16 bytes"));
    let mut cmd = Command::new(mkfs);
    cmd.args(MKFS_OPTIONS)
        .arg("-U")
        .arg(&uuid)
        .arg("-E")
        .arg(format!("hash_seed={hash_seed}"));
    if let Some(dir) = dir {
        cmd.arg("-d").arg(dir);
    }
    cmd.arg(&tmp_path)
        // Nothing from the host's environment: no MKE2FS_* overrides, no locale (mkfs sorts
        // directory entries with the C library's collation when copying a tree).
        .env_clear()
        .env("LC_ALL", "C")
        .env("MKE2FS_CONFIG", &conf_path)
        // The superblock's creation, write and check times, and the times of the inodes mkfs
        // makes itself (root, lost+found, journal).
        .env("E2FSPROGS_FAKE_TIME", FAKE_TIME.to_string())
        .stdin(Stdio::null());
    let out = cmd.output().map_err(|source| DiskImageError::Spawn {
        program: mkfs.to_path_buf(),
        source,
    })?;
    if !out.status.success() {
        return Err(DiskImageError::Mkfs(Box::new(MkfsFailure {
            size,
            dir: dir.map(Path::to_path_buf),
            status: out.status.to_string(),
            stderr: tail(&out.stderr),
        })));
    }

    normalize_inodes(&file)?;
    file.sync_all().map_err(cache_err(&tmp_path))?;
    drop(file);
    fs::rename(&tmp_path, image).map_err(cache_err(image))?;
    tmp_guard.0 = None;
    Ok(())
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, marked as an RFC 4122 version 4 UUID.
fn format_uuid(b: [u8; 16]) -> String {
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

// --- ext4 on-disk layout (Documentation/filesystems/ext4/) --------------------------------------

const SUPERBLOCK_OFFSET: u64 = 1024;
const EXT4_MAGIC: u16 = 0xef53;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_INODE_UNINIT: u16 = 0x1;
const ROOT_INO: u32 = 2;
const GOOD_OLD_INODE_SIZE: usize = 128;

// Inode fields.
const I_UID: usize = 0x02;
const I_ATIME: usize = 0x08;
const I_CTIME: usize = 0x0c;
const I_MTIME: usize = 0x10;
const I_GID: usize = 0x18;
const I_GENERATION: usize = 0x64;
const I_UID_HIGH: usize = 0x78;
const I_GID_HIGH: usize = 0x7a;
const I_CHECKSUM_LO: usize = 0x7c;
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;
const I_CTIME_EXTRA: usize = 0x84;
const I_MTIME_EXTRA: usize = 0x88;
const I_ATIME_EXTRA: usize = 0x8c;
const I_CRTIME: usize = 0x90;
const I_CRTIME_EXTRA: usize = 0x94;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The filesystem geometry [`normalize_inodes`] needs, from the superblock.
struct Geometry {
    block_size: u64,
    groups: u64,
    inodes_per_group: u32,
    inode_size: usize,
    first_ino: u32,
    desc_size: usize,
    desc_table: u64,
    /// The inode checksum seed when metadata checksums are on.
    csum_seed: Option<u32>,
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset)
        .map_err(|e| DiskImageError::Format(format!("read at {offset}: {e}")))
}

fn write_at(file: &File, buf: &[u8], offset: u64) -> Result<()> {
    file.write_all_at(buf, offset)
        .map_err(|e| DiskImageError::Format(format!("write at {offset}: {e}")))
}

fn geometry(file: &File) -> Result<Geometry> {
    let mut sb = [0u8; 1024];
    read_at(file, &mut sb, SUPERBLOCK_OFFSET)?;
    if le16(&sb, 0x38) != EXT4_MAGIC {
        return Err(DiskImageError::Format("no ext4 superblock".into()));
    }
    let log_block_size = le32(&sb, 0x18);
    if log_block_size > 6 {
        return Err(DiskImageError::Format(format!(
            "block size 2^{} KiB",
            log_block_size
        )));
    }
    let block_size = 1024u64 << log_block_size;
    let incompat = le32(&sb, 0x60);
    let ro_compat = le32(&sb, 0x64);
    let blocks = u64::from(le32(&sb, 0x04))
        | if incompat & INCOMPAT_64BIT != 0 {
            u64::from(le32(&sb, 0x150)) << 32
        } else {
            0
        };
    let first_data_block = u64::from(le32(&sb, 0x14));
    let blocks_per_group = u64::from(le32(&sb, 0x20));
    let inodes_per_group = le32(&sb, 0x28);
    let inode_size = usize::from(le16(&sb, 0x58));
    let desc_size = if incompat & INCOMPAT_64BIT != 0 {
        usize::from(le16(&sb, 0xfe))
    } else {
        32
    };
    if blocks_per_group == 0
        || inodes_per_group == 0
        || u64::from(inodes_per_group) > block_size * 8
        || inode_size < GOOD_OLD_INODE_SIZE
        || !inode_size.is_power_of_two()
        || desc_size < 32
    {
        return Err(DiskImageError::Format("implausible superblock".into()));
    }
    let csum_seed = (ro_compat & RO_COMPAT_METADATA_CSUM != 0).then(|| {
        if incompat & INCOMPAT_CSUM_SEED != 0 {
            le32(&sb, 0x270)
        } else {
            crc32c(!0, &sb[0x68..0x78])
        }
    });
    Ok(Geometry {
        block_size,
        groups: (blocks - first_data_block).div_ceil(blocks_per_group),
        inodes_per_group,
        inode_size,
        first_ino: le32(&sb, 0x54),
        desc_size,
        desc_table: (first_data_block + 1) * block_size,
        csum_seed,
    })
}

/// Sets owner 0:0 and every time stamp to [`FAKE_TIME`] (nanoseconds 0) in each in-use inode
/// that `mkfs.ext4 -d` filled from the source tree: the root directory and every inode from
/// `s_first_ino` on. (mkfs copies the source's owner and times; the reserved inodes, such as the
/// journal's, it makes itself with the fake time.) Recomputes the inode checksums.
fn normalize_inodes(file: &File) -> Result<()> {
    let g = geometry(file)?;
    let mut desc = vec![0u8; g.desc_size];
    let mut bitmap = vec![0u8; g.block_size as usize];
    let mut inode = vec![0u8; g.inode_size];
    for group in 0..g.groups {
        read_at(file, &mut desc, g.desc_table + group * g.desc_size as u64)?;
        if le16(&desc, 0x12) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let hi = |at: usize| {
            if g.desc_size >= 64 {
                u64::from(le32(&desc, at)) << 32
            } else {
                0
            }
        };
        let bitmap_block = u64::from(le32(&desc, 0x04)) | hi(0x24);
        let table_block = u64::from(le32(&desc, 0x08)) | hi(0x28);
        read_at(file, &mut bitmap, bitmap_block * g.block_size)?;
        for i in 0..g.inodes_per_group {
            if bitmap[(i / 8) as usize] & (1 << (i % 8)) == 0 {
                continue;
            }
            let ino = group as u32 * g.inodes_per_group + i + 1;
            if ino != ROOT_INO && ino < g.first_ino {
                continue;
            }
            let offset = table_block * g.block_size + u64::from(i) * g.inode_size as u64;
            read_at(file, &mut inode, offset)?;
            normalize_inode(&mut inode, ino, g.csum_seed);
            write_at(file, &inode, offset)?;
        }
    }
    Ok(())
}

/// Whether the 4-byte field at `at` lies inside the inode's used extra space.
fn fits(inode: &[u8], at: usize, len: usize) -> bool {
    inode.len() > GOOD_OLD_INODE_SIZE
        && at + len <= GOOD_OLD_INODE_SIZE + usize::from(le16(inode, I_EXTRA_ISIZE))
        && at + len <= inode.len()
}

fn normalize_inode(inode: &mut [u8], ino: u32, csum_seed: Option<u32>) {
    put16(inode, I_UID, 0);
    put16(inode, I_GID, 0);
    put16(inode, I_UID_HIGH, 0);
    put16(inode, I_GID_HIGH, 0);
    for at in [I_ATIME, I_CTIME, I_MTIME] {
        put32(inode, at, FAKE_TIME);
    }
    for at in [I_CTIME_EXTRA, I_MTIME_EXTRA, I_ATIME_EXTRA, I_CRTIME_EXTRA] {
        if fits(inode, at, 4) {
            put32(inode, at, 0);
        }
    }
    if fits(inode, I_CRTIME, 4) {
        put32(inode, I_CRTIME, FAKE_TIME);
    }
    if let Some(seed) = csum_seed {
        let csum = inode_checksum(inode, ino, seed);
        put16(inode, I_CHECKSUM_LO, csum as u16);
        if fits(inode, I_CHECKSUM_HI, 2) {
            put16(inode, I_CHECKSUM_HI, (csum >> 16) as u16);
        }
    }
}

/// The ext4 inode checksum (`ext4_inode_csum` in the kernel): crc32c seeded with the
/// filesystem's seed, the inode number and generation, over the inode with its checksum fields
/// as zeros.
fn inode_checksum(inode: &[u8], ino: u32, fs_seed: u32) -> u32 {
    let seed = crc32c(fs_seed, &ino.to_le_bytes());
    let seed = crc32c(seed, &le32(inode, I_GENERATION).to_le_bytes());
    let mut copy = inode.to_vec();
    put16(&mut copy, I_CHECKSUM_LO, 0);
    if fits(inode, I_CHECKSUM_HI, 2) {
        put16(&mut copy, I_CHECKSUM_HI, 0);
    }
    crc32c(seed, &copy)
}

/// CRC-32C (Castagnoli), as the kernel's `crc32c()`: no inversion before or after, the caller
/// passes the seed.
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::FileTimes;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::time::{Duration, SystemTime};

    use vmm_sys_util::tempdir::TempDir;

    /// Whether mkfs.ext4 is there or can be installed; says so loudly when not.
    fn have_mkfs(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if find_program("mkfs.ext4").is_some() || unsafe { libc::geteuid() } == 0 {
            return true;
        }
        eprintln!(
            "SKIPPED {test}: mkfs.ext4 is missing and this is not root \
             (install it with `sudo apt-get install {E2FSPROGS_PACKAGE}`)"
        );
        false
    }

    fn tmp() -> TempDir {
        TempDir::new_with_prefix("/tmp/simvm-disk-image-").expect("temporary directory")
    }

    fn e2fsck_clean(image: &Path) {
        let e2fsck = find_program("e2fsck").expect("e2fsck comes with mkfs.ext4");
        let out = Command::new(e2fsck)
            .args(["-f", "-n"])
            .arg(image)
            .output()
            .expect("run e2fsck");
        assert!(
            out.status.success(),
            "e2fsck -fn {}: {}\n{}{}",
            image.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn debugfs(image: &Path, request: &str) -> String {
        let debugfs = find_program("debugfs").expect("debugfs comes with mkfs.ext4");
        let out = Command::new(debugfs)
            .args(["-R", request])
            .arg(image)
            .output()
            .expect("run debugfs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A small tree with every kind of entry mkfs copies.
    fn make_tree(root: &Path) {
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        fs::write(root.join("hello.txt"), "hello\n").unwrap();
        fs::write(root.join("empty"), "").unwrap();
        let mut zeros = vec![0u8; 3 * 4096];
        zeros.extend_from_slice(b"tail");
        fs::write(root.join("sub/sparse-ish"), &zeros).unwrap();
        fs::write(root.join("sub/deeper/tool"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(
            root.join("sub/deeper/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        symlink("../hello.txt", root.join("sub/link")).unwrap();
        fs::hard_link(root.join("hello.txt"), root.join("sub/hard")).unwrap();
    }

    /// Moves every time stamp of the tree: modification times explicitly, change times by
    /// rewriting the same contents.
    fn touch_tree(root: &Path) {
        for rel in ["hello.txt", "empty", "sub/sparse-ish", "sub/deeper/tool"] {
            let path = root.join(rel);
            let contents = fs::read(&path).unwrap();
            fs::write(&path, &contents).unwrap();
            let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_times(FileTimes::new().set_modified(when).set_accessed(when))
                .unwrap();
        }
        fs::set_permissions(
            root.join("sub/deeper/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(!crc32c(!0, b"123456789"), 0xe306_9283);
    }

    #[test]
    fn uuids_are_well_formed() {
        let u = format_uuid([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }

    #[test]
    fn bad_sizes_and_directories_are_reported() {
        let cache = tmp();
        let err = ext4_image(None, (8 << 20) + 512, cache.as_path()).unwrap_err();
        assert!(
            matches!(err, DiskImageError::SizeNotAligned { .. }),
            "{err}"
        );
        let err = ext4_image(None, 512 << 10, cache.as_path()).unwrap_err();
        assert!(matches!(err, DiskImageError::SizeTooSmall { .. }), "{err}");
        let missing = cache.as_path().join("nope");
        let err = ext4_image(Some(&missing), 8 << 20, cache.as_path()).unwrap_err();
        assert!(matches!(err, DiskImageError::DirMissing { .. }), "{err}");
        let file = cache.as_path().join("file");
        fs::write(&file, "x").unwrap();
        let err = ext4_image(Some(&file), 8 << 20, cache.as_path()).unwrap_err();
        assert!(matches!(err, DiskImageError::NotADirectory { .. }), "{err}");
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn the_same_tree_gives_byte_identical_clean_images() {
        if !have_mkfs("the_same_tree_gives_byte_identical_clean_images") {
            return;
        }
        let tree = tmp();
        make_tree(tree.as_path());
        let (cache_a, cache_b) = (tmp(), tmp());
        let size = 16 << 20;

        let a = ext4_image(Some(tree.as_path()), size, cache_a.as_path()).unwrap();
        check_ext4(&a).expect("an image mkfs.ext4 made has the ext4 magic");
        let text = cache_b.as_path().join("not-ext4.txt");
        fs::write(&text, "hello").unwrap();
        let zeros = cache_b.as_path().join("zeros.img");
        fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
        for bad in [&text, &zeros] {
            let err = check_ext4(bad).unwrap_err();
            assert!(matches!(err, DiskImageError::NotExt4 { .. }), "{err}");
        }
        touch_tree(tree.as_path());
        let b = ext4_image(Some(tree.as_path()), size, cache_b.as_path()).unwrap();
        assert_eq!(a.file_name(), b.file_name(), "same tree, same key");
        assert_eq!(fs::metadata(&a).unwrap().len(), size);
        assert!(
            fs::read(&a).unwrap() == fs::read(&b).unwrap(),
            "{} and {} differ",
            a.display(),
            b.display()
        );
        e2fsck_clean(&a);

        // The tree is in the image, owned by root, with the fixed time and the source's modes.
        let stat = debugfs(&a, "stat /sub/deeper/tool");
        assert!(stat.contains("Mode:  04755"), "{stat}");
        assert!(stat.contains("User:     0   Group:     0"), "{stat}");
        assert!(
            stat.contains(&format!("mtime: 0x{FAKE_TIME:08x}:00000000")),
            "{stat}"
        );
        assert_eq!(debugfs(&a, "cat /sub/link"), "");
        assert!(debugfs(&a, "stat /sub/link").contains("Fast link dest: \"../hello.txt\""));
        assert_eq!(debugfs(&a, "cat /hello.txt"), "hello\n");
        assert!(debugfs(&a, "stat /hello.txt").contains("Links: 2"));
        let temporaries: Vec<_> = fs::read_dir(cache_a.as_path().join("disks"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            temporaries.len(),
            1,
            "only the image is left: {temporaries:?}"
        );

        // A second call finds the image without building it again.
        let before = fs::metadata(&a).unwrap().modified().unwrap();
        let again = ext4_image(Some(tree.as_path()), size, cache_a.as_path()).unwrap();
        assert_eq!(again, a);
        assert_eq!(fs::metadata(&a).unwrap().modified().unwrap(), before);

        // Contents, modes and size are all part of the key.
        fs::write(tree.as_path().join("hello.txt"), "hello!\n").unwrap();
        let c = ext4_image(Some(tree.as_path()), size, cache_a.as_path()).unwrap();
        assert_ne!(c, a);
        fs::set_permissions(
            tree.as_path().join("empty"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let d = ext4_image(Some(tree.as_path()), size, cache_a.as_path()).unwrap();
        assert_ne!(d, c);
        let e = ext4_image(Some(tree.as_path()), size * 2, cache_a.as_path()).unwrap();
        assert_ne!(e, d);
        e2fsck_clean(&e);
    }

    #[test]
    fn an_empty_filesystem_is_clean_and_reproducible() {
        if !have_mkfs("an_empty_filesystem_is_clean_and_reproducible") {
            return;
        }
        let (cache_a, cache_b) = (tmp(), tmp());
        let a = ext4_image(None, 8 << 20, cache_a.as_path()).unwrap();
        let b = ext4_image(None, 8 << 20, cache_b.as_path()).unwrap();
        assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap());
        e2fsck_clean(&a);
        // 1 MiB works too, without a journal.
        let small = ext4_image(None, MIN_SIZE, cache_a.as_path()).unwrap();
        e2fsck_clean(&small);
    }

    #[test]
    fn a_tree_gets_its_data_in_blocks_an_inode_share_per_entry_and_headroom() {
        let tree = tmp();
        fs::create_dir(tree.as_path().join("sub")).unwrap();
        fs::write(tree.as_path().join("sub/one-byte"), "x").unwrap();
        fs::write(tree.as_path().join("empty"), "").unwrap();
        symlink("sub/one-byte", tree.as_path().join("link")).unwrap();
        // Five entries (the top directory, sub, two files, the link) and one block of data.
        let used = 5 * BYTES_PER_INODE + BLOCK_SIZE;
        let expected = (used + used / 4 + TREE_HEADROOM).div_ceil(1 << 20) << 20;
        assert_eq!(size_for_tree(tree.as_path()).unwrap(), expected);
        assert_eq!(expected, 17 << 20);
        let err = size_for_tree(&tree.as_path().join("nope")).unwrap_err();
        assert!(matches!(err, DiskImageError::Read { .. }), "{err}");
    }

    #[test]
    fn a_tree_of_many_small_files_and_a_big_one_fits_its_size() {
        if !have_mkfs("a_tree_of_many_small_files_and_a_big_one_fits_its_size") {
            return;
        }
        let tree = tmp();
        for i in 0..1500 {
            fs::write(tree.as_path().join(format!("f{i}")), "").unwrap();
        }
        let big: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
        fs::write(tree.as_path().join("big"), big).unwrap();
        let size = size_for_tree(tree.as_path()).unwrap();
        let cache = tmp();
        let image = ext4_image(Some(tree.as_path()), size, cache.as_path()).unwrap();
        e2fsck_clean(&image);
    }

    #[test]
    fn a_tree_that_does_not_fit_names_mkfs_and_the_tree() {
        if !have_mkfs("a_tree_that_does_not_fit_names_mkfs_and_the_tree") {
            return;
        }
        let tree = tmp();
        let big: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
        fs::write(tree.as_path().join("big"), big).unwrap();
        let cache = tmp();
        let err = ext4_image(Some(tree.as_path()), MIN_SIZE, cache.as_path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DiskImageError::Mkfs(_)), "{text}");
        assert!(text.contains("does the tree fit"), "{text}");
        assert!(text.contains("mkfs.ext4 failed"), "{text}");
        let left: Vec<_> = fs::read_dir(cache.as_path().join("disks"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "no temporary files left: {left:?}");
    }
}

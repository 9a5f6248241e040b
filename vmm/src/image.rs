//! Finding the guest image: given paths, or built (and cached) by the guest-images build script.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The files a machine boots from.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("guest kernel {} not found.\n  Build the default image with `simvm image build` (or pass --kernel PATH)", .0.display())]
    KernelMissing(PathBuf),
    #[error("guest initramfs {} not found.\n  Build the default image with `simvm image build` (or pass --initramfs PATH)", .0.display())]
    InitramfsMissing(PathBuf),
    /// A given kernel or initramfs exists but cannot be used: `what` is "kernel" or
    /// "initramfs", `problem` says why ("is a directory", ...).
    #[error("guest {what} {} {problem}: pass the {what} file with --{what} PATH", path.display())]
    Unusable {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("the guest image build script {} is missing: set SIMVM_GUEST_IMAGES to the guest-images directory of a simvm checkout", .0.display())]
    ScriptMissing(PathBuf),
    #[error("cannot run the guest image build: {0}")]
    Spawn(std::io::Error),
    #[error("the guest image build failed ({0}); its output above says why")]
    BuildFailed(std::process::ExitStatus),
    #[error("the guest image build did not print the {0} path")]
    NoArtefact(&'static str),
}

/// The directory holding the image recipes and build script.
fn guest_images_dir() -> PathBuf {
    std::env::var_os("SIMVM_GUEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images"))
}

/// Builds (or finds in the cache) the image for `recipe`, with the build's progress on stderr.
pub fn build(recipe: Option<&str>) -> Result<GuestImage, ImageError> {
    let script = guest_images_dir().join("build.sh");
    if !script.exists() {
        return Err(ImageError::ScriptMissing(script));
    }
    let mut command = Command::new("bash");
    command.arg(&script);
    if let Some(recipe) = recipe {
        command.args(["--recipe", recipe]);
    }
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(ImageError::Spawn)?;
    if !output.status.success() {
        return Err(ImageError::BuildFailed(output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let artefact = |key: &'static str| {
        stdout
            .lines()
            .rev()
            .find_map(|line| {
                line.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('='))
            })
            .map(PathBuf::from)
            .ok_or(ImageError::NoArtefact(key))
    };
    Ok(GuestImage {
        kernel: artefact("kernel")?,
        initramfs: artefact("initramfs")?,
    })
}

/// Checks that an image given by path exists and is made of regular, readable files.
pub fn given(kernel: PathBuf, initramfs: PathBuf) -> Result<GuestImage, ImageError> {
    check_given("kernel", &kernel, ImageError::KernelMissing)?;
    check_given("initramfs", &initramfs, ImageError::InitramfsMissing)?;
    Ok(GuestImage { kernel, initramfs })
}

/// Why `path` cannot be the guest `what`: missing, a directory, a device, unreadable.
fn check_given(
    what: &'static str,
    path: &Path,
    missing: fn(PathBuf) -> ImageError,
) -> Result<(), ImageError> {
    let unusable = |problem: String| ImageError::Unusable {
        what,
        path: path.to_owned(),
        problem,
    };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing(path.to_owned())),
        Err(e) => return Err(unusable(format!("cannot be read ({e})"))),
    };
    let file_type = metadata.file_type();
    if file_type.is_dir() {
        return Err(unusable("is a directory".into()));
    }
    if !file_type.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if file_type.is_char_device() {
            "a character device"
        } else if file_type.is_block_device() {
            "a block device"
        } else if file_type.is_fifo() {
            "a named pipe"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "a special file"
        };
        return Err(unusable(format!("is not a regular file (it is {kind})")));
    }
    std::fs::File::open(path).map_err(|e| unusable(format!("cannot be read ({e})")))?;
    Ok(())
}

/// Where simvm caches what it builds: `SIMVM_CACHE_DIR`, else `~/.cache/simvm` (the guest image
/// build script uses the same directory).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SIMVM_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/simvm")
}

//! Finding the guest image: given paths, or built (and cached) by the guest-images build script.
//! The script also stages a recipe's files as a directory tree, for a disk ([`recipe_tree`]).

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
    #[error("no guest image recipe `{recipe}` in {} (the recipes there are: {})", dir.display(), known.join(", "))]
    UnknownRecipe {
        recipe: String,
        /// The recipes directory.
        dir: PathBuf,
        known: Vec<String>,
    },
    #[error("staging the files of recipe `{recipe}` failed ({status}); the build's output above says why")]
    RecipeTreeFailed {
        recipe: String,
        status: std::process::ExitStatus,
    },
}

/// The directory holding the image recipes and build script.
fn guest_images_dir() -> PathBuf {
    std::env::var_os("SIMVM_GUEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images"))
}

/// Builds (or finds in the cache) the image for `recipe`, with the build's progress on stderr.
pub fn build(recipe: Option<&str>) -> Result<GuestImage, ImageError> {
    let args = match recipe {
        Some(recipe) => vec!["--recipe", recipe],
        None => Vec::new(),
    };
    let output = run_build_script(&args)?;
    if !output.status.success() {
        return Err(ImageError::BuildFailed(output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(GuestImage {
        kernel: artefact(&stdout, "kernel")?,
        initramfs: artefact(&stdout, "initramfs")?,
    })
}

/// Builds (or finds in the cache) the guest kernel without `kernel/speed.config`
/// (`build.sh --compact-kernel`): tinyconfig's size-first choices, for measuring what the speed
/// options save (docs/performance.md "Guest tunings").
pub fn compact_kernel() -> Result<PathBuf, ImageError> {
    let output = run_build_script(&["--compact-kernel"])?;
    if !output.status.success() {
        return Err(ImageError::BuildFailed(output.status));
    }
    artefact(&String::from_utf8_lossy(&output.stdout), "kernel")
}

/// Stages (or finds in the cache) the files `recipe` adds to the base image, with their shared
/// libraries and the ELF loader, as a directory tree at the paths the image would have them
/// (`usr/bin/etcd`, `lib64/ld-linux-x86-64.so.2`, ...), for a disk; the build's progress goes
/// to stderr. The tree is in the cache: callers must not change it.
pub fn recipe_tree(recipe: &str) -> Result<PathBuf, ImageError> {
    check_recipe(recipe)?;
    let output = run_build_script(&["--recipe-tree", recipe])?;
    if !output.status.success() {
        return Err(ImageError::RecipeTreeFailed {
            recipe: recipe.to_string(),
            status: output.status,
        });
    }
    artefact(&String::from_utf8_lossy(&output.stdout), "tree")
}

/// Whether `name` can name a recipe: the build script takes `[A-Za-z0-9_-]+`, which also keeps
/// the name inside the recipes directory.
pub fn is_recipe_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Refuses a recipe that has no file, naming the recipes there are (before the build script
/// would be started for nothing).
fn check_recipe(recipe: &str) -> Result<(), ImageError> {
    let dir = guest_images_dir().join("recipes");
    if is_recipe_name(recipe) && dir.join(format!("{recipe}.toml")).is_file() {
        return Ok(());
    }
    Err(ImageError::UnknownRecipe {
        recipe: recipe.to_string(),
        known: known_recipes(&dir),
        dir: dir.canonicalize().unwrap_or(dir),
    })
}

/// The recipes in `dir` (`NAME.toml`), sorted.
fn known_recipes(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "toml").then_some(())?;
            Some(path.file_stem()?.to_str()?.to_string())
        })
        .collect();
    names.sort();
    names
}

/// Runs the build script with `args`, its progress on stderr, and returns what it did.
fn run_build_script(args: &[&str]) -> Result<std::process::Output, ImageError> {
    let script = guest_images_dir().join("build.sh");
    if !script.exists() {
        return Err(ImageError::ScriptMissing(script));
    }
    Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(ImageError::Spawn)
}

/// The path the build script printed last as `key=PATH`.
fn artefact(stdout: &str, key: &'static str) -> Result<PathBuf, ImageError> {
    stdout
        .lines()
        .rev()
        .find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
        })
        .map(PathBuf::from)
        .ok_or(ImageError::NoArtefact(key))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_names_are_letters_digits_underscores_and_dashes() {
        for good in ["etcd", "sqlite", "my_app-2"] {
            assert!(is_recipe_name(good), "{good}");
        }
        for bad in ["", "../etcd", "a/b", "etcd.toml", "a b", "é"] {
            assert!(!is_recipe_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_unknown_recipe_is_named_with_the_recipes_there_are() {
        for recipe in ["no-such-recipe", "../recipes/etcd"] {
            let err = recipe_tree(recipe).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, ImageError::UnknownRecipe { .. }),
                "{recipe}: {text}"
            );
            assert!(
                text.starts_with(&format!("no guest image recipe `{recipe}` in /")),
                "{text}"
            );
            assert!(
                text.contains("/guest-images/recipes (the recipes there are: ")
                    && text.contains("etcd"),
                "{text}"
            );
        }
    }
}

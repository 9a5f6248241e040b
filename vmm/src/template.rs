//! Machine templates: boot a guest once, up to the point where its init asks who it is, save
//! the machine there, and start every machine of every run from that save.
//!
//! Booting is most of a short run's cost (on a PVM host the guest kernel's code is emulated:
//! about 20 s per boot), and everything up to the identity request is the same for every
//! machine of the same shape: same kernel, initramfs, memory size, devices, kernel arguments
//! and exit costs. A template is keyed by exactly those ([`template_key`]) and cached under
//! `templates/KEY/` in simvm's cache directory: `template.json` (the vCPU and device state,
//! the guest's clock, the key, the simvm version) and `memory` (the guest RAM, sparse).
//!
//! A machine started from a template maps `memory` copy on write, so the machines of a run
//! share the template's pages, and is then handed its identity (name, addresses, command,
//! mounts, RNG seed) in the buffer its init asked for (docs/guest-abi.md, "Identity").
//!
//! Templates that will not be used again are removed ([`prune`]): after each build, and by
//! `simvm image prune`.

mod memory_file;
mod prune;

pub(crate) use memory_file::{map_private, open_memory, write_sparse_memory};
pub use prune::{prune, EntryKind, PruneReport, PruneRules, Removed};

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};
use simvm_devices::net::MacAddr;
use simvm_devices::virtio::block::{BlockOp, BlockResult};
use vm_memory::GuestMemoryMmap;

use crate::error::{Error, Result};
use crate::host_tsc::{self, TscTrap};
use crate::machine::{Machine, MachineConfig, MachineState, Status, Stop};
use crate::trace::Trace;
use crate::vcpu_state;
use crate::watchdog::Watchdog;

/// Version of the template files; a change in their shape or meaning bumps it.
pub const TEMPLATE_FORMAT: u32 = 1;
/// The simvm that makes and reads templates: its version and a fingerprint of its source
/// (`build.rs`), since device state and boots are only reproducible by the same code.
pub const SIMVM_BUILD: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("SIMVM_SOURCE_HASH"));
const STATE_FILE: &str = "template.json";
const MEMORY_FILE: &str = "memory";
/// The start of the name of the temporary directory a build writes into ([`build_dir`]).
const BUILD_PREFIX: &str = ".build.";
/// A template whose guest has not asked for its identity after this much virtual time never
/// will (a boot takes about 1.5 s of it).
const MAX_BOOT_NS: u64 = 600_000_000_000;
/// `template.json` is small (registers, device state); anything far bigger is not one.
const MAX_STATE_BYTES: u64 = 16 << 20;

/// The MAC the template's NIC has while it boots; every machine sets its own.
const TEMPLATE_MAC: MacAddr = MacAddr([0x02, 0x53, 0x49, 0x4d, 0xff, 0xff]);

/// What `template.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateHeader {
    format: u32,
    /// The simvm version that made it: device state is only read back by the same version.
    simvm: String,
    key: String,
    mem_size: u64,
    /// BLAKE3 of the memory file, so a damaged file is refused rather than run.
    memory_blake3: String,
    /// Guest frame of the identity buffer the guest asked to have filled.
    identity_frame: u32,
    machine: MachineState,
}

/// A loaded template.
pub struct Template {
    dir: PathBuf,
    header: TemplateHeader,
    memory: File,
    /// How this process came by it.
    pub origin: Origin,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("key", &self.header.key)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What [`Template::obtain`] found.
#[derive(Debug)]
pub enum Availability {
    Ready(Box<Template>),
    /// The guest never reaches the template point; `dir` is where its template would be.
    Unavailable {
        reason: String,
        dir: PathBuf,
    },
}

/// An exclusive `flock` on a file, released when dropped (or when the process dies).
struct FileLock {
    _file: File,
}

impl FileLock {
    /// The lock, once no other process holds it.
    fn exclusive(path: &Path) -> Result<Self> {
        let file = Self::open(path)?;
        flock(&file, libc::LOCK_EX).map_err(|e| Self::error(path, e))?;
        Ok(Self { _file: file })
    }

    /// The lock, or `None` if another process holds it.
    fn try_exclusive(path: &Path) -> Result<Option<Self>> {
        let file = Self::open(path)?;
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(Self::error(path, e)),
        }
    }

    fn open(path: &Path) -> Result<File> {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::SnapshotFile {
                path: path.to_path_buf(),
                reason: format!("cannot open the lock: {e}"),
            })
    }

    fn error(path: &Path, e: std::io::Error) -> Error {
        Error::SnapshotFile {
            path: path.to_path_buf(),
            reason: format!("cannot lock: {e}"),
        }
    }
}

fn flock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor `file` keeps open; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `templates/KEY.lock`: held by the simvm building or loading the template `KEY`, and by
/// [`prune`] while it removes that key's files.
fn lock_path(templates: &Path, key: &str) -> PathBuf {
    templates.join(format!("{key}.lock"))
}

/// `templates/KEY.unavailable`: why machines of key `KEY` have no template.
fn note_path(templates: &Path, key: &str) -> PathBuf {
    templates.join(format!("{key}.unavailable"))
}

/// Records that the template or note at `path` was used now, for [`prune`]: as the file's
/// modification time, which nothing else changes once it is written (access times are often not
/// kept: `noatime`, `relatime`; a stamp file would be one more file per template). Best effort:
/// a read-only cache still works.
fn mark_used(path: &Path) {
    if let Ok(file) = File::options().write(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Whether a template came from the cache or was built now.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    Cached,
    /// Booted and saved now, in this much wall time; `replaced` says why a cached one was not
    /// usable, if there was one.
    Built {
        wall: Duration,
        replaced: Option<String>,
    },
}

/// The key of the template for machines like `config`: everything that shapes the guest up to
/// its identity request, and nothing that differs between machines (name, MAC, seed, boot
/// data, wall clock, disks' contents).
pub fn template_key(kvm: &Kvm, config: &MachineConfig) -> Result<String> {
    TemplateKeys::default().key(kvm, config)
}

/// Computes template keys for the machines of a run, reading and hashing each image and
/// asking KVM for the CPU model only once (a run's machines mostly share both).
#[derive(Default)]
pub struct TemplateKeys {
    /// The hash of each image: its kernel file, and its initramfs archives by identity (the
    /// machines of a run share the same `Arc`s, which outlive the world's construction, where
    /// keys are computed).
    images: Vec<(ImageId, blake3::Hash)>,
    cpu: Option<String>,
}

/// An image as a run holds it: the kernel's path, and each initramfs archive's address and
/// length in memory.
type ImageId = (PathBuf, Vec<(usize, usize)>);

impl TemplateKeys {
    /// The key of the template for machines like `config` ([`template_key`]).
    pub fn key(&mut self, kvm: &Kvm, config: &MachineConfig) -> Result<String> {
        let mut h = blake3::Hasher::new();
        h.update(b"simvm template\0");
        h.update(&TEMPLATE_FORMAT.to_le_bytes());
        h.update(SIMVM_BUILD.as_bytes());
        h.update(b"\0");
        h.update(self.image(config)?.as_bytes());
        config_part(&mut h, config);
        // The saved vCPU state is only valid under the CPU model it ran with.
        hash_part(&mut h, self.cpu(kvm)?.as_bytes());
        Ok(h.finalize().to_hex()[..32].to_string())
    }

    fn image(&mut self, config: &MachineConfig) -> Result<blake3::Hash> {
        let archives = config
            .initramfs
            .iter()
            .map(|a| (a.as_ptr() as usize, a.len()))
            .collect();
        let id: ImageId = (config.kernel.clone(), archives);
        if let Some((_, hash)) = self.images.iter().find(|(known, _)| *known == id) {
            return Ok(*hash);
        }
        let kernel = std::fs::read(&config.kernel).map_err(|source| Error::KernelOpen {
            path: config.kernel.clone(),
            source,
        })?;
        let mut h = blake3::Hasher::new();
        hash_part(&mut h, &kernel);
        h.update(&(config.initramfs.len() as u64).to_le_bytes());
        for archive in &config.initramfs {
            hash_part(&mut h, archive);
        }
        let hash = h.finalize();
        self.images.push((id, hash));
        Ok(hash)
    }

    fn cpu(&mut self, kvm: &Kvm) -> Result<String> {
        if let Some(cpu) = &self.cpu {
            return Ok(cpu.clone());
        }
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let cpu = crate::cpuid::template_hash(&crate::cpuid::guest_cpuid(&supported)?);
        Ok(self.cpu.insert(cpu).clone())
    }
}

/// The parts of a template's key that are the machine's configuration, not its image.
fn config_part(h: &mut blake3::Hasher, config: &MachineConfig) {
    hash_part(h, config.cmdline_extra.as_bytes());
    let costs = &config.costs;
    for word in [
        config.mem_size,
        u64::from(config.stall_limit),
        u64::from(config.mac.is_some()),
        u64::from(config.offloads.checksum),
        u64::from(config.offloads.segmentation),
        costs.pio_ns,
        costs.mmio_ns,
        costs.msr_ns,
        costs.irq_ns,
        costs.clock_read_ns,
        costs.watchdog_kick_ns,
        config.disks.len() as u64,
    ] {
        h.update(&word.to_le_bytes());
    }
    for sectors in &config.disks {
        h.update(&sectors.to_le_bytes());
    }
}

fn hash_part(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

impl Template {
    /// The template for machines like `config` from `cache` (`templates/KEY/`), built and saved
    /// there first if it is missing or unusable. `Ok(None)` if these machines have no template
    /// point: their guest crashed, stopped or halted before it asked for its identity (a test
    /// kernel, a broken init); such machines boot, and the reason is kept beside the templates
    /// so later runs do not try again.
    pub fn obtain(kvm: &Kvm, config: &MachineConfig, cache: &Path) -> Result<Availability> {
        Self::obtain_keyed(kvm, config, cache, &template_key(kvm, config)?)
    }

    fn obtain_keyed(
        kvm: &Kvm,
        config: &MachineConfig,
        cache: &Path,
        key: &str,
    ) -> Result<Availability> {
        let templates = cache.join("templates");
        std::fs::create_dir_all(&templates).map_err(|e| Error::SnapshotFile {
            path: templates.clone(),
            reason: format!("cannot create: {e}"),
        })?;
        // One simvm builds a template while the others wait for it.
        let _lock = FileLock::exclusive(&lock_path(&templates, key))?;
        let dir = templates.join(key);
        let unavailable = note_path(&templates, key);
        if let Ok(reason) = std::fs::read_to_string(&unavailable) {
            mark_used(&unavailable);
            return Ok(Availability::Unavailable { reason, dir });
        }
        let replaced = match Self::load(&dir, Some(key)) {
            Ok(template) => return Ok(Availability::Ready(Box::new(template))),
            Err(_) if !dir.exists() => None,
            Err(e) => Some(e.to_string()),
        };
        let started = host_tsc::monotonic();
        let built = match build(kvm, config, key) {
            Ok(built) => built,
            Err(Error::TemplateBoot(reason)) => {
                // Best effort: without the note the next run only tries again.
                let _ = std::fs::write(&unavailable, &reason);
                return Ok(Availability::Unavailable { reason, dir });
            }
            Err(e) => return Err(e),
        };
        save(&dir, built)?;
        let mut template = Self::load(&dir, Some(key))?;
        template.origin = Origin::Built {
            wall: host_tsc::monotonic().saturating_sub(started),
            replaced,
        };
        // The cache grows here, so it is pruned here. This key's lock is still held, so the
        // template just built stays. Best effort: a run never fails for it.
        let _ = prune(cache, PruneRules::AUTOMATIC);
        Ok(Availability::Ready(Box::new(template)))
    }

    /// Reads the template in `dir`, refusing one that is damaged, from another simvm, or (with
    /// `key`) for other machines.
    pub fn load(dir: &Path, key: Option<&str>) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let refuse = |reason: String| Error::SnapshotFile {
            path: path.clone(),
            reason,
        };
        let text = read_state(&path).map_err(refuse)?;
        let made_by = MadeBy::read(&text).map_err(refuse)?;
        if !made_by.is_this_simvm() {
            return Err(refuse(format!(
                "made by simvm {} (template format {}); this is simvm {} (format {})",
                made_by.simvm, made_by.format, SIMVM_BUILD, TEMPLATE_FORMAT
            )));
        }
        let header: TemplateHeader = serde_json::from_slice(&text)
            .map_err(|e| refuse(format!("damaged or truncated: {e}")))?;
        if let Some(key) = key.filter(|&k| k != header.key) {
            return Err(refuse(format!(
                "is the template of another image or machine shape (key {}, wanted {key})",
                header.key
            )));
        }
        let memory_path = dir.join(MEMORY_FILE);
        let memory = open_memory(&memory_path, header.mem_size, &header.memory_blake3)?;
        mark_used(&path);
        Ok(Self {
            dir: dir.to_path_buf(),
            header,
            memory,
            origin: Origin::Cached,
        })
    }

    pub fn key(&self) -> &str {
        &self.header.key
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The guest's clock at the template point: a restored guest's clock goes on from here.
    pub fn guest_now_ns(&self) -> u64 {
        self.header.machine.guest_now_ns
    }

    /// Starts a machine like `config` from the template: its memory is the template's, copy
    /// on write; its devices and vCPU continue where the template stopped, and its init finds
    /// the machine's own identity.
    pub fn start(&self, kvm: &Kvm, config: MachineConfig) -> Result<Machine> {
        if config.mem_size != self.header.mem_size {
            return Err(Error::Snapshot(format!(
                "template {} has {} MiB of memory; the machine {} MiB",
                self.header.key,
                self.header.mem_size >> 20,
                config.mem_size >> 20
            )));
        }
        let mem = map_private(&self.memory, self.header.mem_size)?;
        let mut machine = Machine::restore(kvm, config, mem, &self.header.machine, None)?;
        machine.answer_identity(self.header.identity_frame)?;
        Ok(machine)
    }
}

/// `template.json`'s bytes (at most [`MAX_STATE_BYTES`]).
fn read_state(path: &Path) -> std::result::Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut text = Vec::new();
    file.take(MAX_STATE_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(text)
}

/// The fields of `template.json` that say which simvm made it. They are read first, so that
/// another simvm's file is named as such rather than as damaged.
#[derive(Deserialize)]
struct MadeBy {
    format: u32,
    simvm: String,
}

impl MadeBy {
    fn read(text: &[u8]) -> std::result::Result<Self, String> {
        serde_json::from_slice(text)
            .map_err(|e| format!("not a simvm template (damaged or truncated?): {e}"))
    }

    /// Only this simvm's own templates are loaded (see [`SIMVM_BUILD`]).
    fn is_this_simvm(&self) -> bool {
        self.format == TEMPLATE_FORMAT && self.simvm == SIMVM_BUILD
    }
}

/// Boots a machine like `config` (with no identity of its own) until its init asks for one,
/// and saves it there.
/// A machine stopped at its identity request, to be saved as a template.
struct Built {
    key: String,
    mem_size: u64,
    identity_frame: u32,
    machine: MachineState,
    mem: GuestMemoryMmap,
}

fn build(kvm: &Kvm, config: &MachineConfig, key: &str) -> Result<Built> {
    let template_config = MachineConfig {
        name: "template".into(),
        index: 0,
        boot: None,
        rng_seed: blake3::derive_key("simvm template kernel rng v1", key.as_bytes()),
        mac: config.mac.map(|_| TEMPLATE_MAC),
        incarnation: 1,
        epoch_ns: 0,
        template: None,
        ..config.clone()
    };
    let mut machine = Machine::new(kvm, template_config)?;
    let identity_frame = boot_to_identity(&mut machine)?;
    Ok(Built {
        key: key.into(),
        mem_size: config.mem_size,
        identity_frame,
        machine: machine.save_state(&vcpu_state::saved_msrs(kvm)?)?,
        // The mapping is shared: it outlives the machine.
        mem: machine.memory().clone(),
    })
}

/// Runs `machine` alone until its init asks for its identity; its disks read as zeros (their
/// contents are the machines'), its frames go nowhere.
fn boot_to_identity(machine: &mut Machine) -> Result<u32> {
    let mut trace = Trace::new(vec!["template".into()]);
    let watchdog = Watchdog::start(Duration::from_secs(5))?;
    let _trap = TscTrap::arm()?;
    let fail = |machine: &Machine, why: String| {
        let tail = machine.console_tail().join("\n  ");
        Error::TemplateBoot(format!("{why}; the console's last lines:\n  {tail}"))
    };
    let mut step = 0u64;
    loop {
        step += 1;
        if machine.now() > MAX_BOOT_NS {
            return Err(fail(
                machine,
                "the guest did not ask for its identity within 600 virtual seconds (is the image's init a simvm init?)".into(),
            ));
        }
        let status = machine.step(step, &mut trace, Some(&watchdog))?;
        machine.take_console_lines();
        machine.take_outbox();
        let requests = machine.take_block_requests();
        let served = !requests.is_empty();
        for (disk, request) in requests {
            let result = match request.op {
                BlockOp::Read { sectors, .. } => BlockResult::Ok {
                    data: Some(vec![0; sectors as usize * 512]),
                },
                BlockOp::Write { .. } | BlockOp::Flush => BlockResult::Ok { data: None },
            };
            machine.complete_block(disk, request.token, result);
        }
        match status {
            Status::Running => {}
            Status::TemplatePoint { identity_frame } => return Ok(identity_frame),
            Status::Halted { .. } if served => {}
            Status::Halted { wake_at: Some(t) } => machine.wake(step, t, &mut trace)?,
            Status::Halted { wake_at: None } => {
                return Err(fail(
                    machine,
                    "the guest halted with nothing to wake it".into(),
                ))
            }
            Status::Stopped(stop) => {
                let why = match stop {
                    Stop::Crashed(report) => format!("the guest crashed: {}", report.kind),
                    other => format!("the guest stopped ({other:?})"),
                };
                return Err(fail(
                    machine,
                    format!("{why} before it asked for its identity"),
                ));
            }
        }
    }
}

/// Writes the template into `dir` atomically: a temporary directory beside it, renamed. If
/// another simvm published the same template meanwhile, theirs stays (it is the same).
fn save(dir: &Path, built: Built) -> Result<()> {
    let io_error = |path: &Path, e: std::io::Error| Error::SnapshotFile {
        path: path.to_path_buf(),
        reason: format!("cannot write: {e}"),
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    let tmp = build_dir(dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| io_error(&tmp, e))?;
    let result = (|| {
        let memory_blake3 =
            write_sparse_memory(&tmp.join(MEMORY_FILE), &built.mem, built.mem_size)?;
        let header = TemplateHeader {
            format: TEMPLATE_FORMAT,
            simvm: SIMVM_BUILD.into(),
            key: built.key,
            mem_size: built.mem_size,
            memory_blake3,
            identity_frame: built.identity_frame,
            machine: built.machine,
        };
        let json = serde_json::to_vec(&header)
            .map_err(|e| Error::Snapshot(format!("cannot encode the template: {e}")))?;
        let state = tmp.join(STATE_FILE);
        let mut file = File::create(&state).map_err(|e| io_error(&state, e))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error(&state, e))?;
        if dir.exists() {
            let _ = std::fs::remove_dir_all(dir);
        }
        match std::fs::rename(&tmp, dir) {
            Ok(()) => Ok(()),
            // Published by a concurrent simvm in the meantime.
            Err(_) if dir.join(STATE_FILE).exists() => Ok(()),
            Err(e) => Err(io_error(dir, e)),
        }
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// The temporary directory a build of the template `dir` writes into, beside it:
/// `.build.KEY.PID`. It names the key so that [`prune`] knows which lock guards it.
fn build_dir(dir: &Path) -> PathBuf {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let key = dir.file_name().unwrap_or_default().to_string_lossy();
    parent.join(format!("{BUILD_PREFIX}{key}.{}", std::process::id()))
}

/// Templates shared by the machines of a run, by key.
#[derive(Default)]
pub struct Templates {
    slots: Vec<TemplateSlot>,
    keys: TemplateKeys,
}

struct TemplateSlot {
    template: Option<Arc<Template>>,
    use_: TemplateUse,
}

/// A template the machines of a run started from, or could not.
#[derive(Clone, Debug)]
pub struct TemplateUse {
    pub key: String,
    pub dir: PathBuf,
    /// `None`: there is no template for these machines (the reason says why); they booted.
    pub origin: std::result::Result<Origin, String>,
}

impl Templates {
    /// The template for machines like `config`, obtained once per key; `None` if they have
    /// none (see [`Template::obtain`]).
    pub fn for_machine(
        &mut self,
        kvm: &Kvm,
        config: &MachineConfig,
        cache: &Path,
    ) -> Result<Option<Arc<Template>>> {
        let key = self.key(kvm, config)?;
        if let Some(slot) = self.slots.iter().find(|s| s.use_.key == key) {
            return Ok(slot.template.clone());
        }
        let slot = match Template::obtain_keyed(kvm, config, cache, &key)? {
            Availability::Ready(template) => TemplateSlot {
                use_: TemplateUse {
                    key: key.clone(),
                    dir: template.dir.clone(),
                    origin: Ok(template.origin.clone()),
                },
                template: Some(Arc::from(template)),
            },
            Availability::Unavailable { reason, dir } => TemplateSlot {
                use_: TemplateUse {
                    key: key.clone(),
                    dir,
                    origin: Err(reason),
                },
                template: None,
            },
        };
        let template = slot.template.clone();
        self.slots.push(slot);
        Ok(template)
    }

    /// The key of the template for machines like `config`.
    pub fn key(&mut self, kvm: &Kvm, config: &MachineConfig) -> Result<String> {
        self.keys.key(kvm, config)
    }

    /// What the run used, for its outcome.
    pub fn uses(&self) -> Vec<TemplateUse> {
        self.slots.iter().map(|s| s.use_.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty directory of its own for a test's files.
    pub(super) fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("simvm-template-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_directory_without_a_template_is_refused() {
        let dir = scratch("empty");
        let error = Template::load(&dir, None).unwrap_err().to_string();
        assert!(
            error.contains("template.json") && error.contains("cannot open"),
            "{error}"
        );
        std::fs::write(dir.join(STATE_FILE), b"{\"format\": 1").unwrap();
        let error = Template::load(&dir, None).unwrap_err().to_string();
        assert!(error.contains("not a simvm template"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

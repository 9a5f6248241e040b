//! World snapshots: the whole world saved once a condition holds, and continued from it with a
//! new seed (`--snapshot-at`, `--from`).
//!
//! A snapshot is taken at the first step after the condition holds at which nothing is on its
//! way: no frame in the network, no disk request in flight. Then only the machines (vCPU,
//! memory, devices, clocks), the disks' contents and faults, and the world's position (step,
//! incarnations, timeline positions) need saving; the network is rebuilt by replaying its
//! timeline. A continuation draws everything after the snapshot from its own seed: link
//! behaviour, disk latencies, crash survivors, later incarnations' RNG seeds, and the guests'
//! kernel RNGs, which are reseeded (docs/templates.md, "World snapshots").
//!
//! Files in the snapshot directory: `snapshot.json` (format, simvm build, the world it belongs
//! to, its id, where it was taken), `world.bin` (the state, bincode) and `NAME.memory` (each
//! running machine's RAM, sparse).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use simvm_devices::disk::DiskState;

use super::{MachineAction, Node, Slot, World};
use crate::error::{Error, Result};
use crate::machine::{MachineClock, MachineState, Stop};
use crate::network::NetAction;
use crate::template::{open_memory, write_sparse_memory, SIMVM_BUILD};
use crate::vcpu_state;

/// Version of the snapshot files.
pub const SNAPSHOT_FORMAT: u32 = 3;
const HEADER_FILE: &str = "snapshot.json";
const BODY_FILE: &str = "world.bin";
/// A snapshot's state (without memory) is far below this; a larger length is damage.
const MAX_BODY_BYTES: u64 = 4 << 30;

/// When to take a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotCondition {
    /// Once the world reaches this virtual time (ns).
    At(u64),
    /// Once every machine has printed a console line containing this text.
    Console(String),
}

impl SnapshotCondition {
    /// `time=DURATION` or `console=TEXT`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.split_once('=') {
            Some(("time", duration)) => crate::units::parse_duration_ns(duration).map(Self::At),
            Some(("console", line)) if !line.is_empty() => Ok(Self::Console(line.to_string())),
            _ => Err(format!(
                "{text:?}: say `time=DURATION` (e.g. time=5s) or `console=TEXT` (every machine \
                 has printed a line containing TEXT)"
            )),
        }
    }
}

/// As the command line gives it: `time=10s`, `console=cluster up`.
impl std::fmt::Display for SnapshotCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Self::At(ns) => write!(f, "time={}", crate::units::format_ns(*ns)),
            Self::Console(text) => write!(f, "console={text}"),
        }
    }
}

/// Take a snapshot into `dir` when `condition` holds.
#[derive(Clone, Debug)]
pub struct SnapshotRequest {
    pub condition: SnapshotCondition,
    pub dir: PathBuf,
    /// Files the caller keeps with the snapshot, by name (the command line took it, say).
    pub extra_files: Vec<(String, Vec<u8>)>,
}

/// A snapshot a run took, or continued from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub dir: PathBuf,
    pub id: String,
    /// The step and world time it was taken at, and the seed of the run that took it.
    pub step: u64,
    pub vtime_ns: u64,
    pub seed: u64,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: u32,
    simvm: String,
    /// The world it belongs to: images, machine shapes, scenario ([`World::world_key`]).
    world: String,
    /// The timeline events it has behind it ([`timeline_past`]), which a continuation shares.
    past: String,
    /// [`snapshot_id`]: BLAKE3 of `world.bin` and of this header's other fields; it also covers
    /// the memory files, whose hashes are inside `world.bin`.
    id: String,
    seed: u64,
    step: u64,
    vtime_ns: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Body {
    pub nodes: Vec<NodeSnapshot>,
    pub next_action: usize,
    pub network_actions: usize,
}

#[derive(Serialize, Deserialize)]
pub(super) struct NodeSnapshot {
    pub incarnation: u32,
    pub slot: SlotSnapshot,
    pub machine: Option<MachineSnapshot>,
    pub disks: Vec<DiskState>,
    pub last_now: u64,
    pub last_exit_status: Option<u8>,
    pub ready_at: Option<u64>,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) enum SlotSnapshot {
    Runnable,
    Halted(Option<u64>),
    PowerOff(Option<u8>),
    Killed,
    HaltedForever,
}

#[derive(Serialize, Deserialize)]
pub(super) struct MachineSnapshot {
    pub state: MachineState,
    pub clock: MachineClock,
    pub ready_at: Option<u64>,
    pub exit_status: Option<u8>,
    pub memory_blake3: String,
}

impl SlotSnapshot {
    fn of(slot: &Slot) -> Result<Self> {
        Ok(match slot {
            Slot::Runnable => Self::Runnable,
            Slot::Halted(wake) => Self::Halted(*wake),
            Slot::Stopped(Stop::PowerOff { exit_status }) => Self::PowerOff(*exit_status),
            Slot::Stopped(Stop::Killed) => Self::Killed,
            Slot::Stopped(Stop::HaltedForever) => Self::HaltedForever,
            Slot::Stopped(other) => {
                return Err(Error::Snapshot(format!(
                    "a machine stopped as {other:?}; such a world is not saved"
                )))
            }
        })
    }

    pub(super) fn slot(&self) -> Slot {
        match self {
            Self::Runnable => Slot::Runnable,
            Self::Halted(wake) => Slot::Halted(*wake),
            Self::PowerOff(exit_status) => Slot::Stopped(Stop::PowerOff {
                exit_status: *exit_status,
            }),
            Self::Killed => Slot::Stopped(Stop::Killed),
            Self::HaltedForever => Slot::Stopped(Stop::HaltedForever),
        }
    }
}

fn memory_file(dir: &Path, machine: &str) -> PathBuf {
    dir.join(format!("{machine}.memory"))
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::SnapshotFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl World {
    /// Whether the snapshot condition holds after a step at world time `at`.
    pub(super) fn snapshot_condition_holds(&self, at: u64) -> bool {
        match self.snapshot.as_ref().map(|r| &r.condition) {
            None => false,
            Some(SnapshotCondition::At(t)) => at >= *t,
            Some(SnapshotCondition::Console(_)) => self.printed.iter().all(|&p| p),
        }
    }

    /// Marks machine `index` as having printed `line`, for a console condition.
    pub(super) fn note_console_line(&mut self, index: usize, line: &str) {
        if let Some(SnapshotCondition::Console(text)) = self.snapshot.as_ref().map(|r| &r.condition)
        {
            if line.contains(text.as_str()) {
                self.printed[index] = true;
            }
        }
    }

    /// Nothing on its way: no frame in the network, no disk request in flight.
    pub(super) fn quiescent(&self) -> bool {
        // A paused machine's pause is not part of what a snapshot keeps.
        self.network.as_ref().is_none_or(|n| n.is_quiet())
            && self
                .nodes
                .iter()
                .all(|n| n.paused.is_none() && n.disks.iter().all(|d| !d.has_in_flight()))
    }

    /// Saves the world into the requested directory (written beside it, then renamed).
    pub(super) fn take_snapshot(&mut self, at: u64) -> Result<SnapshotInfo> {
        let Some(request) = self.snapshot.clone() else {
            return Err(Error::Snapshot("no snapshot was asked for".into()));
        };
        let dir = request.dir;
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "snapshot".into());
        let tmp = parent.join(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .map_err(|e| file_error(&tmp, format!("cannot create: {e}")))?;
        let mut result = self.write_snapshot(&tmp, at);
        for (name, bytes) in &request.extra_files {
            let path = tmp.join(name);
            if let (Ok(_), Err(e)) = (&result, std::fs::write(&path, bytes)) {
                result = Err(file_error(&path, e));
            }
        }
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            file_error(&dir, format!("cannot publish the snapshot: {e}"))
        })?;
        Ok(SnapshotInfo { dir, ..info })
    }

    fn write_snapshot(&mut self, dir: &Path, at: u64) -> Result<SnapshotInfo> {
        let msrs = vcpu_state::saved_msrs(&self.kvm)?;
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for node in &mut self.nodes {
            nodes.push(save_node(node, dir, &msrs)?);
        }
        let body = Body {
            nodes,
            next_action: self.next_action,
            network_actions: self.network.as_ref().map_or(0, |n| n.actions_applied()),
        };
        let bytes = bincode::serialize(&body)
            .map_err(|e| Error::Snapshot(format!("cannot encode the world: {e}")))?;
        let body_path = dir.join(BODY_FILE);
        std::fs::write(&body_path, &bytes).map_err(|e| file_error(&body_path, e))?;
        let mut header = Header {
            format: SNAPSHOT_FORMAT,
            simvm: SIMVM_BUILD.into(),
            world: self.world_key.clone(),
            past: timeline_past(
                &self.timeline,
                self.network.as_ref().map_or(&[], |n| n.timeline()),
                body.next_action,
                body.network_actions,
            ),
            id: String::new(),
            seed: self.seed.0,
            step: self.step,
            vtime_ns: at,
        };
        header.id = snapshot_id(&header, &bytes);
        let json = serde_json::to_vec_pretty(&header)
            .map_err(|e| Error::Snapshot(format!("cannot encode the header: {e}")))?;
        let header_path = dir.join(HEADER_FILE);
        std::fs::write(&header_path, json).map_err(|e| file_error(&header_path, e))?;
        Ok(SnapshotInfo {
            dir: dir.to_path_buf(),
            id: header.id,
            step: header.step,
            vtime_ns: header.vtime_ns,
            seed: header.seed,
        })
    }
}

fn save_node(node: &mut Node, dir: &Path, msrs: &[u32]) -> Result<NodeSnapshot> {
    let slot = SlotSnapshot::of(&node.slot)?;
    let machine = match node.machine.as_mut() {
        Some(machine) => {
            let state = machine.save_state(msrs)?;
            let path = memory_file(dir, &node.config.name);
            let memory_blake3 = write_sparse_memory(&path, machine.memory(), node.config.mem_size)?;
            Some(MachineSnapshot {
                state,
                clock: machine.clock(),
                ready_at: machine.ready_at(),
                exit_status: machine.exit_status(),
                memory_blake3,
            })
        }
        None => None,
    };
    let disks = node
        .disks
        .iter()
        .map(|d| d.save())
        .collect::<Result<Vec<_>>>()?;
    Ok(NodeSnapshot {
        incarnation: node.config.incarnation,
        slot,
        machine,
        disks,
        last_now: node.last_now,
        last_exit_status: node.last_exit_status,
        ready_at: node.ready_at,
    })
}

/// A snapshot read back, checked against the world it is meant to continue.
pub(super) struct LoadedSnapshot {
    pub info: SnapshotInfo,
    pub body: Body,
    past: String,
}

/// The snapshot's id: BLAKE3 of the encoded world and of every header field a continuation
/// uses, so an edited step, time, seed or past is found as damage is.
fn snapshot_id(header: &Header, body: &[u8]) -> String {
    let mut hasher = blake3::Hasher::new();
    for field in [&header.simvm, &header.world, &header.past] {
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    for number in [
        u64::from(header.format),
        header.seed,
        header.step,
        header.vtime_ns,
    ] {
        hasher.update(&number.to_le_bytes());
    }
    hasher.update(body);
    hasher.finalize().to_hex()[..32].to_string()
}

/// What a snapshot has behind it of a world's timelines: the first `machine_applied` machine
/// actions and the first `network_applied` network actions. The rest of the timeline, the
/// future, is the continuation's own: another seed brings another nemesis schedule, as long as
/// it starts after the snapshot.
pub(super) fn timeline_past(
    timeline: &[(u64, MachineAction)],
    network: &[(u64, NetAction)],
    machine_applied: usize,
    network_applied: usize,
) -> String {
    let machine = &timeline[..machine_applied.min(timeline.len())];
    let network = &network[..network_applied.min(network.len())];
    // Debug output is stable within one simvm build, which the header also names.
    let text = format!("{machine:?}{network:?}");
    blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
}

/// Reads the header of the snapshot in `dir`, refusing a directory that holds none and a
/// snapshot from another simvm build: what can be said of a snapshot before its world is
/// built (a soak says it once, not for every seed).
pub fn check_snapshot(dir: &Path) -> Result<()> {
    read_header(dir).map(drop)
}

/// The header's bytes, once its format and simvm build are this one's.
fn read_header(dir: &Path) -> Result<Vec<u8>> {
    let header_path = dir.join(HEADER_FILE);
    let text = std::fs::read(&header_path)
        .map_err(|e| file_error(&header_path, format!("not a simvm snapshot: {e}")))?;
    #[derive(Deserialize)]
    struct Version {
        format: u32,
        simvm: String,
    }
    let version: Version = serde_json::from_slice(&text)
        .map_err(|e| file_error(&header_path, format!("damaged or truncated: {e}")))?;
    if version.format != SNAPSHOT_FORMAT || version.simvm != SIMVM_BUILD {
        return Err(file_error(
            &header_path,
            format!(
                "made by simvm {} (snapshot format {}); this is simvm {SIMVM_BUILD} (format \
                 {SNAPSHOT_FORMAT})",
                version.simvm, version.format
            ),
        ));
    }
    Ok(text)
}

impl LoadedSnapshot {
    /// Reads the snapshot in `dir`, refusing one that is damaged, from another simvm or for
    /// another world (`world_key`).
    pub fn load(dir: &Path, world_key: &str) -> Result<Self> {
        let header_path = dir.join(HEADER_FILE);
        let text = read_header(dir)?;
        let header: Header = serde_json::from_slice(&text)
            .map_err(|e| file_error(&header_path, format!("damaged or truncated: {e}")))?;
        if header.world != world_key {
            return Err(file_error(
                &header_path,
                "belongs to another world: other images, machines or scenario (continue a \
                 snapshot with the scenario and options that took it; only --seed may differ)",
            ));
        }
        let body_path = dir.join(BODY_FILE);
        let bytes = std::fs::read(&body_path).map_err(|e| file_error(&body_path, e))?;
        if snapshot_id(&header, &bytes) != header.id {
            return Err(file_error(
                dir,
                format!(
                    "is damaged or truncated: {BODY_FILE} and the fields of {HEADER_FILE} do \
                     not match its id"
                ),
            ));
        }
        use bincode::Options;
        let body: Body = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .with_limit(MAX_BODY_BYTES)
            .deserialize(&bytes)
            .map_err(|e| file_error(&body_path, format!("damaged: {e}")))?;
        Ok(Self {
            info: SnapshotInfo {
                dir: dir.to_path_buf(),
                id: header.id,
                step: header.step,
                vtime_ns: header.vtime_ns,
                seed: header.seed,
            },
            body,
            past: header.past,
        })
    }

    /// Refuses a continuation whose timelines differ from the snapshot's before it was taken:
    /// other events already applied, or one of its own events due before the snapshot's time.
    pub fn check_past(
        &self,
        timeline: &[(u64, MachineAction)],
        network: &[(u64, NetAction)],
    ) -> Result<()> {
        let (machine_applied, network_applied) = (self.body.next_action, self.body.network_actions);
        let taken = self.info.vtime_ns;
        let past = timeline_past(timeline, network, machine_applied, network_applied);
        let early = (timeline.iter().skip(machine_applied).map(|(t, _)| *t))
            .chain(network.iter().skip(network_applied).map(|(t, _)| *t))
            .filter(|&t| t < taken)
            .min();
        if past == self.past && early.is_none() {
            return Ok(());
        }
        let detail = match early {
            Some(t) => format!(
                "this run has an event at {} on its timeline, before the snapshot was taken",
                crate::console::format_vtime(t)
            ),
            None => "this run's timeline differs from the snapshot's before it was taken".into(),
        };
        Err(file_error(
            &self.info.dir.join(HEADER_FILE),
            format!(
                "was taken at {}, and {detail}: a continuation shares the timeline up to the \
                 snapshot and only the seed differs (a `[nemesis]` with `start` after the \
                 snapshot's time gives every seed its own faults from there)",
                crate::console::format_vtime(taken)
            ),
        ))
    }

    /// The memory file of machine `name`, checked against its hash.
    pub fn memory(&self, name: &str, mem_size: u64, blake3: &str) -> Result<std::fs::File> {
        open_memory(&memory_file(&self.info.dir, name), mem_size, blake3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    /// A snapshot taken at 2 s with the first of `timeline`'s actions applied.
    fn taken_with(timeline: &[(u64, MachineAction)]) -> LoadedSnapshot {
        LoadedSnapshot {
            info: SnapshotInfo {
                dir: PathBuf::from("snap"),
                id: "id".into(),
                step: 100,
                vtime_ns: 2 * SECOND,
                seed: 1,
            },
            body: Body {
                nodes: Vec::new(),
                next_action: 1,
                network_actions: 0,
            },
            past: timeline_past(timeline, &[], 1, 0),
        }
    }

    #[test]
    fn a_continuation_shares_the_past_and_owns_its_future() {
        let pause = |machine, at| (at, MachineAction::Pause { machine });
        let snapshot = taken_with(&[pause(0, SECOND), pause(1, 5 * SECOND)]);
        // Another seed's nemesis: other faults, all after the snapshot.
        let other_future = [pause(0, SECOND), pause(2, 3 * SECOND), pause(1, 9 * SECOND)];
        snapshot.check_past(&other_future, &[]).unwrap();
        snapshot.check_past(&[pause(0, SECOND)], &[]).unwrap();
        // Another past.
        let other_past = [pause(1, SECOND), pause(1, 5 * SECOND)];
        let err = snapshot.check_past(&other_past, &[]).unwrap_err();
        assert!(
            err.to_string().contains("differs from the snapshot's"),
            "{err}"
        );
        // An event of its own before the snapshot's time.
        let early = [pause(0, SECOND), pause(2, SECOND + 500_000_000)];
        let err = snapshot.check_past(&early, &[]).unwrap_err().to_string();
        assert!(
            err.contains("was taken at 00:00:02.000000,")
                && err.contains("an event at 00:00:01.500000 "),
            "{err}"
        );
    }

    #[test]
    fn a_directory_without_this_builds_header_is_no_snapshot() {
        let dir = std::env::temp_dir().join(format!("simvm-not-a-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = check_snapshot(&dir).unwrap_err().to_string();
        assert!(err.contains("not a simvm snapshot"), "{err}");
        let header = dir.join(HEADER_FILE);
        std::fs::write(&header, r#"{"format": 1, "simvm": "0.0.0-other"}"#).unwrap();
        let err = check_snapshot(&dir).unwrap_err().to_string();
        assert!(err.contains("made by simvm 0.0.0-other"), "{err}");
        let this = format!(r#"{{"format": {SNAPSHOT_FORMAT}, "simvm": "{SIMVM_BUILD}"}}"#);
        std::fs::write(&header, this).unwrap();
        check_snapshot(&dir).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_edited_header_field_is_found_as_damage() {
        let dir =
            std::env::temp_dir().join(format!("simvm-edited-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let body = bincode::serialize(&Body {
            nodes: Vec::new(),
            next_action: 0,
            network_actions: 0,
        })
        .unwrap();
        std::fs::write(dir.join(BODY_FILE), &body).unwrap();
        let mut header = Header {
            format: SNAPSHOT_FORMAT,
            simvm: SIMVM_BUILD.into(),
            world: "world".into(),
            past: "past".into(),
            id: String::new(),
            seed: 1,
            step: 100,
            vtime_ns: 2 * SECOND,
        };
        header.id = snapshot_id(&header, &body);
        let write = |header: &Header| {
            std::fs::write(dir.join(HEADER_FILE), serde_json::to_vec(header).unwrap()).unwrap()
        };
        write(&header);
        let loaded = LoadedSnapshot::load(&dir, "world").unwrap();
        assert_eq!((loaded.info.step, loaded.info.vtime_ns), (100, 2 * SECOND));
        for edit in [
            |h: &mut Header| h.step = 99,
            |h: &mut Header| h.vtime_ns += 1,
            |h: &mut Header| h.seed = 2,
            |h: &mut Header| h.past = "other".into(),
        ] {
            let mut edited = header.clone();
            edit(&mut edited);
            write(&edited);
            let err = LoadedSnapshot::load(&dir, "world")
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("do not match its id"), "{err}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn conditions_parse() {
        assert_eq!(
            SnapshotCondition::parse("time=1.5s"),
            Ok(SnapshotCondition::At(1_500_000_000))
        );
        assert_eq!(
            SnapshotCondition::parse("console=cluster ready"),
            Ok(SnapshotCondition::Console("cluster ready".into()))
        );
        for bad in ["5s", "console=", "time=soon", "when=5s"] {
            assert!(SnapshotCondition::parse(bad).is_err(), "{bad}");
        }
    }
}

//! The trace: every guest-visible event, folded into the run's digest and optionally written as
//! JSON lines.
//!
//! The digest is BLAKE3 over a fixed binary encoding of each event in order, so two runs have the
//! same digest only if the guests saw the same exits, values, interrupts, time jumps and console
//! output at the same steps. The encoding takes no message text that simvm or a dependency
//! writes for people: such events carry a [`Note`], whose text goes to the JSON lines and whose
//! stable bytes go to the digest, so rewording a message never changes a digest. The encoding
//! has a version, [`DIGEST_FORMAT`], hashed first and printed with the digest
//! (`v2-...`): digests of different formats are never equal. For `--check-determinism` the trace can also keep a 64-bit
//! fingerprint per event, which locates the first step at which two runs diverge.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::state::StateFingerprint;

/// Version of the digest's encoding; bumped whenever an event's bytes change.
pub const DIGEST_FORMAT: u32 = 2;

/// Text for people, with the stable bytes the digest takes in its place.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Note {
    pub text: String,
    #[serde(skip)]
    pub stable: Vec<u8>,
}

impl Note {
    pub fn new(text: impl Into<String>, stable: Stable) -> Self {
        Self {
            text: text.into(),
            stable: stable.0,
        }
    }
}

/// Builds the stable bytes of a [`Note`]: fixed-width little-endian numbers, length-prefixed
/// strings.
#[derive(Clone, Debug, Default)]
pub struct Stable(Vec<u8>);

impl Stable {
    pub fn new(tag: u8) -> Self {
        Self(vec![tag])
    }

    pub fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn i64(mut self, value: i64) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn opt_u64(self, value: Option<u64>) -> Self {
        match value {
            Some(v) => self.u64(1).u64(v),
            None => self.u64(0),
        }
    }

    pub fn str(self, text: &str) -> Self {
        let mut this = self.u64(text.len() as u64);
        this.0.extend_from_slice(text.as_bytes());
        this
    }
}

/// A guest-visible event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    PioIn {
        port: u16,
        size: u8,
        value: u32,
    },
    PioOut {
        port: u16,
        size: u8,
        value: u32,
    },
    MmioRead {
        addr: u64,
        size: u8,
        value: u64,
    },
    MmioWrite {
        addr: u64,
        size: u8,
        value: u64,
    },
    MsrRead {
        index: u32,
        value: u64,
    },
    MsrWrite {
        index: u32,
        value: u64,
    },
    Halt,
    Interrupt {
        vector: u8,
    },
    TimerFired {
        deadline_ns: u64,
    },
    TimeJump {
        to_ns: u64,
    },
    ClockKick {
        reads: u32,
    },
    /// A message on the control channel: its event number and argument.
    Control {
        control: u8,
        arg: u32,
    },
    /// The guest registered its clock page (refused if not in RAM).
    ClockPage {
        gpa: u64,
        accepted: bool,
    },
    Console {
        line: String,
    },
    /// The watchdog interrupted a guest that did not exit for too long: nondeterministic.
    WatchdogKick {
        rip: u64,
    },
    /// The machine's NIC sent a frame (identified by a fingerprint of its bytes).
    FrameSent {
        len: u32,
        fingerprint: u64,
    },
    /// A frame reached the machine's NIC; `accepted` is false when no receive buffer was free.
    FrameDelivered {
        from: u16,
        len: u32,
        fingerprint: u64,
        accepted: bool,
    },
    /// The switch dropped a frame from this machine on its way to `to`.
    FrameDropped {
        to: u16,
        reason: Note,
    },
    /// A timeline action changed the network.
    Network {
        action: Note,
    },
    /// A device rejected something the guest did (for example a malformed virtio chain).
    DeviceError {
        message: Note,
    },
    /// The guest's registers and memory after a step (`--trace-state`); never in the digest.
    State(StateFingerprint),
    /// A timeline action on a machine or a disk (kill, restart, disk fault).
    Fault {
        action: Note,
    },
    /// The guest submitted a disk request (`fingerprint` of the data written, or 0).
    DiskRequest {
        disk: String,
        kind: String,
        sector: u64,
        len: u64,
        fingerprint: u64,
        completes_at_ns: u64,
    },
    /// A disk request completed (`fingerprint` of the data read, or 0).
    DiskCompleted {
        disk: String,
        status: String,
        at_ns: u64,
        fingerprint: u64,
    },
    /// A new incarnation of the machine powered on.
    PowerOn {
        incarnation: u32,
    },
    /// The world continues from a snapshot (its id): a continuation is only comparable with
    /// continuations of the same snapshot.
    FromSnapshot {
        id: String,
    },
    /// The machine started from a template (its key) instead of booting: a run from another
    /// template is not comparable, so the key is in the digest.
    Template {
        key: String,
        guest_now_ns: u64,
    },
}

impl Event {
    /// The fixed binary encoding the digest is computed over. Tags are part of the digest
    /// format: a retired tag (8) is never reused.
    fn encode(&self, out: &mut Vec<u8>) {
        let mut put = |tag: u8, fields: &[u64]| {
            out.push(tag);
            for f in fields {
                out.extend_from_slice(&f.to_le_bytes());
            }
        };
        match self {
            Self::PioIn { port, size, value } => {
                put(1, &[(*port).into(), (*size).into(), (*value).into()])
            }
            Self::PioOut { port, size, value } => {
                put(2, &[(*port).into(), (*size).into(), (*value).into()])
            }
            Self::MmioRead { addr, size, value } => put(3, &[*addr, (*size).into(), *value]),
            Self::MmioWrite { addr, size, value } => put(4, &[*addr, (*size).into(), *value]),
            Self::MsrRead { index, value } => put(5, &[(*index).into(), *value]),
            Self::MsrWrite { index, value } => put(6, &[(*index).into(), *value]),
            Self::Halt => put(7, &[]),
            Self::Interrupt { vector } => put(9, &[(*vector).into()]),
            Self::TimerFired { deadline_ns } => put(10, &[*deadline_ns]),
            Self::TimeJump { to_ns } => put(11, &[*to_ns]),
            Self::ClockKick { reads } => put(12, &[(*reads).into()]),
            // Tag 13 (control messages as text) is retired.
            Self::Control { control, arg } => put(26, &[(*control).into(), (*arg).into()]),
            Self::ClockPage { gpa, accepted } => put(27, &[*gpa, (*accepted).into()]),
            Self::Console { line } => {
                put(14, &[line.len() as u64]);
                out.extend_from_slice(line.as_bytes());
            }
            Self::WatchdogKick { rip } => put(15, &[*rip]),
            Self::FrameSent { len, fingerprint } => put(16, &[(*len).into(), *fingerprint]),
            Self::FrameDelivered {
                from,
                len,
                fingerprint,
                accepted,
            } => put(
                17,
                &[
                    (*from).into(),
                    (*len).into(),
                    *fingerprint,
                    (*accepted).into(),
                ],
            ),
            Self::FrameDropped { to, reason } => {
                put(18, &[(*to).into(), reason.stable.len() as u64]);
                out.extend_from_slice(&reason.stable);
            }
            Self::Network { action } => {
                put(19, &[action.stable.len() as u64]);
                out.extend_from_slice(&action.stable);
            }
            Self::DeviceError { message } => {
                put(20, &[message.stable.len() as u64]);
                out.extend_from_slice(&message.stable);
            }
            Self::State(state) => put(
                21,
                &[state.rip, state.registers, state.fpu_msrs, state.memory],
            ),
            Self::Fault { action } => {
                put(22, &[action.stable.len() as u64]);
                out.extend_from_slice(&action.stable);
            }
            Self::DiskRequest {
                disk,
                kind,
                sector,
                len,
                fingerprint,
                completes_at_ns,
            } => {
                put(
                    23,
                    &[
                        *sector,
                        *len,
                        *fingerprint,
                        *completes_at_ns,
                        disk.len() as u64,
                        kind.len() as u64,
                    ],
                );
                out.extend_from_slice(disk.as_bytes());
                out.extend_from_slice(kind.as_bytes());
            }
            Self::DiskCompleted {
                disk,
                status,
                at_ns,
                fingerprint,
            } => {
                put(
                    24,
                    &[*at_ns, *fingerprint, disk.len() as u64, status.len() as u64],
                );
                out.extend_from_slice(disk.as_bytes());
                out.extend_from_slice(status.as_bytes());
            }
            Self::PowerOn { incarnation } => put(25, &[(*incarnation).into()]),
            Self::FromSnapshot { id } => {
                put(29, &[id.len() as u64]);
                out.extend_from_slice(id.as_bytes());
            }
            Self::Template { key, guest_now_ns } => {
                put(28, &[*guest_now_ns, key.len() as u64]);
                out.extend_from_slice(key.as_bytes());
            }
        }
    }
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    step: u64,
    machine: &'a str,
    vtime_ns: u64,
    #[serde(flatten)]
    event: &'a Event,
}

/// The running digest, with optional per-event fingerprints and JSON output.
pub struct Trace {
    hasher: blake3::Hasher,
    scratch: Vec<u8>,
    events: u64,
    fingerprints: Option<Vec<(u64, u64)>>,
    json: Option<BufWriter<File>>,
    machine_names: Vec<String>,
}

impl Trace {
    pub fn new(machine_names: Vec<String>) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&DIGEST_FORMAT.to_le_bytes());
        Self {
            hasher,
            scratch: Vec::with_capacity(64),
            events: 0,
            fingerprints: None,
            json: None,
            machine_names,
        }
    }

    /// Also writes every event as a JSON line to `path`.
    pub fn with_json(mut self, path: &Path) -> Result<Self> {
        self.json = Some(BufWriter::new(File::create(path).map_err(Error::Trace)?));
        Ok(self)
    }

    /// Also keeps a fingerprint per event, for locating divergence between runs.
    pub fn with_fingerprints(mut self) -> Self {
        self.fingerprints = Some(Vec::new());
        self
    }

    /// Records one event of `machine` at `step` and virtual time `vtime_ns`.
    pub fn record(
        &mut self,
        step: u64,
        machine: usize,
        vtime_ns: u64,
        event: &Event,
    ) -> Result<()> {
        self.write(step, machine, vtime_ns, event, true)
    }

    /// Records a machine's state fingerprint: in the JSON lines and the per-event fingerprints,
    /// but not in the digest, which stays the same with or without `--trace-state`.
    pub fn record_state(
        &mut self,
        step: u64,
        machine: usize,
        vtime_ns: u64,
        state: StateFingerprint,
    ) -> Result<()> {
        self.write(step, machine, vtime_ns, &Event::State(state), false)
    }

    fn write(
        &mut self,
        step: u64,
        machine: usize,
        vtime_ns: u64,
        event: &Event,
        into_digest: bool,
    ) -> Result<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&step.to_le_bytes());
        self.scratch
            .extend_from_slice(&(machine as u64).to_le_bytes());
        self.scratch.extend_from_slice(&vtime_ns.to_le_bytes());
        event.encode(&mut self.scratch);
        if into_digest {
            self.hasher.update(&self.scratch);
            self.events += 1;
        }
        if let Some(prints) = &mut self.fingerprints {
            prints.push((step, fnv1a(&self.scratch)));
        }
        if let Some(out) = &mut self.json {
            let record = JsonRecord {
                step,
                machine: self.machine_names.get(machine).map_or("?", String::as_str),
                vtime_ns,
                event,
            };
            serde_json::to_writer(&mut *out, &record).map_err(|e| Error::Trace(e.into()))?;
            out.write_all(b"\n").map_err(Error::Trace)?;
        }
        Ok(())
    }

    /// Number of events recorded.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The digest of everything so far: the format version, then 32 hex digits
    /// (`v2-7379187daeec9acde7670aa391da8bb4`).
    pub fn digest(&self) -> String {
        let hash = self.hasher.finalize();
        format!("v{DIGEST_FORMAT}-{}", &hash.to_hex()[..32])
    }

    /// Flushes the JSON output and returns the per-event fingerprints, if kept.
    pub fn finish(mut self) -> Result<Option<Vec<(u64, u64)>>> {
        if let Some(out) = &mut self.json {
            out.flush().map_err(Error::Trace)?;
        }
        Ok(self.fingerprints.take())
    }
}

/// The step of the first event at which two fingerprint lists differ, if they differ.
pub fn first_divergence(a: &[(u64, u64)], b: &[(u64, u64)]) -> Option<u64> {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return Some(x.0.min(y.0));
        }
    }
    match a.len().cmp(&b.len()) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Less => Some(b[a.len()].0),
        std::cmp::Ordering::Greater => Some(a[b.len()].0),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[Event]) -> Trace {
        let mut trace = Trace::new(vec!["m1".into()]).with_fingerprints();
        for (i, e) in events.iter().enumerate() {
            trace.record(i as u64, 0, 1000 * i as u64, e).unwrap();
        }
        trace
    }

    #[test]
    fn same_events_same_digest_and_a_change_anywhere_shows() {
        let events = vec![
            Event::Halt,
            Event::Interrupt { vector: 0x30 },
            Event::PioOut {
                port: 0x3f8,
                size: 1,
                value: 65,
            },
        ];
        assert_eq!(run(&events).digest(), run(&events).digest());
        let mut changed = events.clone();
        changed[2] = Event::PioOut {
            port: 0x3f8,
            size: 1,
            value: 66,
        };
        assert_ne!(run(&events).digest(), run(&changed).digest());
        let a = run(&events).finish().unwrap().unwrap();
        let b = run(&changed).finish().unwrap().unwrap();
        assert_eq!(first_divergence(&a, &b), Some(2));
        assert_eq!(first_divergence(&a, &a), None);
        assert_eq!(first_divergence(&a, &a[..1]), Some(1));
    }

    #[test]
    fn notes_digest_their_stable_bytes_not_their_text() {
        let note = |text: &str, code: u64| Event::Network {
            action: Note::new(text, Stable::new(1).u64(code)),
        };
        let a = run(&[note("heal all partitions", 7)]).digest();
        assert_eq!(a, run(&[note("all partitions healed", 7)]).digest());
        assert_ne!(a, run(&[note("heal all partitions", 8)]).digest());
        assert!(a.starts_with(&format!("v{DIGEST_FORMAT}-")), "{a}");
        assert_eq!(a.len(), "v2-".len() + 32);
    }

    #[test]
    fn json_lines_name_the_machine() {
        let dir = std::env::temp_dir().join(format!("simvm-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        let mut trace = Trace::new(vec!["m1".into()]).with_json(&path).unwrap();
        trace
            .record(7, 0, 99, &Event::Interrupt { vector: 32 })
            .unwrap();
        trace.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\":7,\"machine\":\"m1\",\"vtime_ns\":99,\"event\":\"interrupt\",\"vector\":32}\n");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

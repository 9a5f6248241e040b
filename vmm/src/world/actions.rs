//! The timeline's actions on machines and disks: kills, restarts, disk faults, pauses and clock
//! faults, each traced as a fault note.

use simvm_devices::disk::{CrashPolicy, Fault};
use simvm_devices::virtio::net::RxDrop;

use crate::console::format_line;
use crate::error::Result;
use crate::machine::{disk_name, Stop};
use crate::skew::ClockChange;
use crate::trace::{Event, Note, Stable};

use super::*;

impl World {
    /// Applies every world action due at `at`: network changes, then machine actions.
    pub(super) fn apply_actions(&mut self, at: u64, print: &mut dyn FnMut(&str)) -> Result<()> {
        self.apply_network_timeline(at, print)?;
        while let Some((t, action)) = self.timeline.get(self.next_action).cloned() {
            if t > at {
                break;
            }
            self.next_action += 1;
            let notes = self.apply_machine_action(action, t)?;
            let fault_id = self.nodes.len() + 1;
            for action in notes {
                print(&format_line(self.step, FAULT_SOURCE, t, &action.text));
                self.trace
                    .record(self.step, fault_id, t, &Event::Fault { action })?;
            }
        }
        Ok(())
    }

    /// Carries out one machine action; returns what happened, for the console and the trace.
    pub(super) fn apply_machine_action(
        &mut self,
        action: MachineAction,
        at: u64,
    ) -> Result<Vec<Note>> {
        match action {
            MachineAction::Kill { machine, policy } => {
                let policy = policy.unwrap_or(self.crash_policy);
                Ok(self.kill(machine, policy, at))
            }
            MachineAction::Restart { machine } => {
                let mut lines = Vec::new();
                if self.nodes[machine].machine.is_some() {
                    lines = self.kill(machine, self.crash_policy, at);
                }
                self.power_on(machine, at)?;
                let node = &self.nodes[machine];
                lines.push(Note::new(
                    format!(
                        "restart {}: incarnation {} boots",
                        node.name(),
                        node.incarnation()
                    ),
                    Stable::new(4)
                        .u64(machine as u64)
                        .u64(node.incarnation().into()),
                ));
                Ok(lines)
            }
            MachineAction::DiskFault {
                machine,
                disk,
                fault,
            } => {
                let node = &mut self.nodes[machine];
                let line = format!("disk {}/{}: {fault}", node.config.name, disk_name(disk));
                if let Some(disk) = node.disks.get_mut(disk) {
                    disk.apply_fault(fault);
                }
                let stable =
                    stable_fault(Stable::new(5).u64(machine as u64).u64(disk as u64), fault);
                Ok(vec![Note::new(line, stable)])
            }
            MachineAction::Pause { machine } => Ok(vec![self.pause(machine, at)]),
            MachineAction::Resume { machine } => self.resume(machine, at).map(|note| vec![note]),
            MachineAction::Clock { machine, change } => {
                Ok(vec![self.change_clock(machine, change, at)])
            }
        }
    }

    /// Stops stepping machine `index` until it resumes.
    pub(super) fn pause(&mut self, index: usize, at: u64) -> Note {
        let node = &mut self.nodes[index];
        let label = node.label();
        let stable = Stable::new(6).u64(index as u64);
        if node.machine.is_none() || node.paused.is_some() {
            return Note::new(format!("pause {label}: not running"), stable.u64(0));
        }
        node.paused = Some(at);
        Note::new(format!("pause {label}"), stable.u64(1))
    }

    /// Steps machine `index` again from `at`: its clock jumps over the pause.
    pub(super) fn resume(&mut self, index: usize, at: u64) -> Result<Note> {
        let node = &mut self.nodes[index];
        let label = node.label();
        let stable = Stable::new(7).u64(index as u64);
        let (Some(machine), Some(since)) = (node.machine.as_mut(), node.paused) else {
            return Ok(Note::new(
                format!("resume {label}: not paused"),
                stable.u64(0),
            ));
        };
        let gap = at.saturating_sub(since);
        machine.wake(self.step, at, &mut self.trace)?;
        node.paused = None;
        Ok(Note::new(
            format!(
                "resume {label}: its clock jumps {}",
                crate::units::format_ns(gap)
            ),
            stable.u64(1).u64(gap),
        ))
    }

    /// Applies a clock fault to machine `index` and to its later incarnations.
    pub(super) fn change_clock(&mut self, index: usize, change: ClockChange, at: u64) -> Note {
        let node = &mut self.nodes[index];
        let label = node.label();
        let config = &mut node.config;
        let stable = Stable::new(8).u64(index as u64);
        let stable = match change {
            ClockChange::Rate { ppm } => {
                config.clock_ppm = ppm;
                if let Some(machine) = node.machine.as_mut() {
                    // A halted machine's clock still reads its halt time; it runs at the old
                    // rate until `at`. A machine already past `at` has shown its guest the old
                    // rate up to its own time, which must not change.
                    machine.set_clock_rate(at.max(machine.now()), ppm);
                }
                stable.u64(1).i64(ppm)
            }
            ClockChange::Step { delta_ns } => {
                config.wall_base_ns = config.wall_base_ns.saturating_add_signed(delta_ns);
                if let Some(machine) = node.machine.as_mut() {
                    machine.step_wall_clock(delta_ns);
                }
                stable.u64(2).i64(delta_ns)
            }
            ClockChange::Offset { offset_ns } => {
                // How far the guest's wall clock is from the world's now, and the step that
                // puts it at `offset_ns`.
                let error = match node.machine.as_ref() {
                    Some(machine) => machine.wall_clock_error_ns(at),
                    None => wall_error(config.wall_base_ns),
                };
                let delta_ns = offset_ns.saturating_sub(error);
                config.wall_base_ns = config.wall_base_ns.saturating_add_signed(delta_ns);
                if let Some(machine) = node.machine.as_mut() {
                    machine.step_wall_clock(delta_ns);
                }
                stable.u64(3).i64(offset_ns)
            }
        };
        Note::new(format!("clock {label}: {change}"), stable)
    }

    /// Power loss on machine `index`: the VM is discarded, frames on their way to it are
    /// lost, and each disk keeps what `policy` says of its unflushed writes.
    pub(super) fn kill(&mut self, index: usize, policy: CrashPolicy, at: u64) -> Vec<Note> {
        let seed = self.seed;
        let node = &mut self.nodes[index];
        let name = node.config.name.clone();
        if node.machine.is_none() {
            return vec![Note::new(
                format!("kill {name}: already stopped"),
                Stable::new(2).u64(index as u64),
            )];
        }
        let incarnation = node.incarnation();
        node.retire(Stop::Killed);
        node.last_now = node.last_now.max(at);
        let label = node.label();
        let mut lines = vec![Note::new(
            format!("kill {label}: power lost"),
            Stable::new(1).u64(index as u64).u64(incarnation.into()),
        )];
        for disk in &mut node.disks {
            let outcome = disk.crash(seed, &name, incarnation, policy);
            let policy_code = CrashPolicy::ALL.iter().position(|p| *p == outcome.policy);
            let stable = Stable::new(3)
                .u64(index as u64)
                .str(&disk.name)
                .opt_u64(policy_code.map(|p| p as u64))
                .u64(outcome.unflushed_writes)
                .u64(outcome.in_flight_writes)
                .u64(outcome.writes_lost)
                .u64(outcome.sectors_lost)
                .u64(outcome.writes_torn)
                .u64(outcome.dropped_requests);
            lines.push(Note::new(
                format!("kill {label}: {}: {outcome}", disk.name),
                stable,
            ));
        }
        if let Some(network) = &mut self.network {
            for delivery in network.take_due(index, u64::MAX) {
                // The NIC is gone: counted as dropped at the receiver.
                let _ = network.delivered(&delivery, Err(RxDrop::NotRunning));
            }
        }
        lines
    }
}

/// The digest's bytes of a disk fault, after `stable`'s.
fn stable_fault(stable: Stable, fault: Fault) -> Stable {
    match fault {
        Fault::LatentErrors { start, count } => stable.u64(1).u64(start).u64(count),
        Fault::WriteErrors { start, count } => stable.u64(2).u64(start).u64(count),
        Fault::Stall { until_ns } => stable.u64(3).u64(until_ns),
        Fault::Slow { extra_ns } => stable.u64(4).u64(extra_ns),
        Fault::Clear => stable.u64(5),
    }
}

/// How far a wall clock base (`CLOCK_REALTIME` at the guest clock's zero) is from the world's.
fn wall_error(wall_base_ns: u64) -> i64 {
    let world = i128::from(crate::clock::DEFAULT_WALL_BASE_NS);
    i64::try_from(i128::from(wall_base_ns) - world).unwrap_or(i64::MAX)
}

//! The guest's port writes: the interrupt controller, the console, and simvm's port block with
//! its control channel (readiness, exit status, identity, panics, reboots).

use simvm_devices::abi;
use simvm_devices::pic;
use simvm_devices::pvclock::{Absurd, ControlEvent, PortEvent, SimvmPorts};
use simvm_devices::serial::Console;
use vm_memory::{Bytes, GuestAddress};

use crate::boot_data;
use crate::crash::{self, CrashKind, CrashReport};
use crate::error::Result;
use crate::trace::{Event, Note, Stable, Trace};

use super::*;

impl Machine {
    pub(super) fn io_out(
        &mut self,
        step: u64,
        port: u16,
        data: &[u8],
        trace: &mut Trace,
    ) -> Result<Status> {
        let byte = data.first().copied().unwrap_or(0);
        if pic::PORTS.contains(&port) {
            self.pic.write(port, byte);
        } else if SimvmPorts::contains(port) {
            let event = self.ports.write(&self.mem, port, data, self.guest_now());
            return self.port_event(step, event, trace);
        } else if self.pio.write(&self.mem, port.into(), data) {
            let output = self
                .pio
                .get_mut::<Console>(self.console)
                .map(Console::take_output)
                .unwrap_or_default();
            self.console_output(&output, step, trace)?;
        }
        Ok(Status::Running)
    }

    pub(super) fn console_output(
        &mut self,
        bytes: &[u8],
        step: u64,
        trace: &mut Trace,
    ) -> Result<()> {
        for line in self.console_lines.push(bytes) {
            if line.contains("Kernel panic - not syncing") {
                self.saw_panic_line = true;
            }
            trace.record(
                step,
                self.index,
                self.now,
                &Event::Console { line: line.clone() },
            )?;
            self.pending_lines.push((self.now, line));
        }
        Ok(())
    }

    pub(super) fn port_event(
        &mut self,
        step: u64,
        event: PortEvent,
        trace: &mut Trace,
    ) -> Result<Status> {
        let event = match event {
            PortEvent::ClockKick(reads) => {
                self.charge_kick(reads);
                trace.record(step, self.index, self.now, &Event::ClockKick { reads })?;
                return Ok(Status::Running);
            }
            PortEvent::Absurd(absurd) => {
                if let Some(reads) = event.kick_reads() {
                    self.charge_kick(reads);
                }
                let stable = Stable::new(2).str("clock").u64(match absurd {
                    Absurd::ClockKick { .. } => 1,
                    Absurd::TimerDeadline { .. } => 2,
                });
                let note = Note::new(format!("the guest asked for the absurd: {absurd}"), stable);
                self.device_error(step, note, trace)?;
                return Ok(Status::Running);
            }
            PortEvent::Control(control) => {
                let (code, arg) = control_code(&control);
                let event = Event::Control { control: code, arg };
                trace.record(step, self.index, self.now, &event)?;
                if let ControlEvent::Identity(frame) = control {
                    return self.identity_requested(step, frame, trace);
                }
                return Ok(self.control(step, control));
            }
            PortEvent::ClockPageRegistered(gpa) => Event::ClockPage {
                gpa,
                accepted: true,
            },
            PortEvent::ClockPageRejected(gpa) => Event::ClockPage {
                gpa,
                accepted: false,
            },
            PortEvent::TimerArmed(_)
            | PortEvent::TimerDisarmed
            | PortEvent::IrqPoll
            | PortEvent::Ignored { .. } => return Ok(Status::Running),
        };
        trace.record(step, self.index, self.now, &event)?;
        Ok(Status::Running)
    }

    /// Charges the virtual time of `reads` stalled clock reads.
    pub(super) fn charge_kick(&mut self, reads: u32) {
        self.stats.clock_kicks += 1;
        self.advance(u64::from(reads).saturating_mul(self.costs.clock_read_ns));
    }

    /// Init asks who its machine is: answer in the buffer at guest frame `frame`, or, for a
    /// machine without boot data (the one a template is built from), pause there.
    pub(super) fn identity_requested(
        &mut self,
        step: u64,
        frame: u32,
        trace: &mut Trace,
    ) -> Result<Status> {
        if self.config.boot.is_none() {
            return Ok(Status::TemplatePoint {
                identity_frame: frame,
            });
        }
        if let Err(addr) = self.write_identity(frame) {
            let stable = Stable::new(2).str("identity").u64(addr);
            let text = format!(
                "the guest asked for the absurd: an identity buffer at {addr:#x}, outside RAM"
            );
            self.device_error(step, Note::new(text, stable), trace)?;
        }
        Ok(Status::Running)
    }

    /// Writes the machine's boot data and RNG seed into the guest's identity buffer at `frame`
    /// (nothing without boot data); `Err(address)` if the buffer is not in RAM.
    pub(super) fn write_identity(&self, frame: u32) -> std::result::Result<(), u64> {
        let addr = u64::from(frame) << 12;
        let Some(boot) = &self.config.boot else {
            return Ok(());
        };
        if addr.saturating_add(abi::identity::BUFFER_SIZE) > self.config.mem_size {
            return Err(addr);
        }
        let buffer = boot_data::identity_buffer(boot, &self.config.rng_seed);
        self.mem
            .write_slice(&buffer, GuestAddress(addr))
            .map_err(|_| addr)
    }

    pub(super) fn control(&mut self, step: u64, event: ControlEvent) -> Status {
        match event {
            ControlEvent::Ready => {
                self.ready_at.get_or_insert(self.now);
                Status::Running
            }
            ControlEvent::Exit(status) => {
                self.exit_status = Some(status);
                Status::Running
            }
            ControlEvent::PowerOff => Status::Stopped(Stop::PowerOff {
                exit_status: self.exit_status,
            }),
            ControlEvent::Restart => Status::Stopped(Stop::Restart {
                exit_status: self.exit_status,
            }),
            ControlEvent::Panic => {
                let report = self.crash_report(step, CrashKind::KernelPanic);
                Status::Stopped(Stop::Crashed(Box::new(report)))
            }
            ControlEvent::Identity(_) | ControlEvent::Unknown(_) => Status::Running,
        }
    }

    pub(super) fn kicked(&mut self, step: u64, trace: &mut Trace) -> Result<Status> {
        self.stats.watchdog_kicks += 1;
        let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
        self.advance(self.costs.watchdog_kick_ns);
        trace.record(step, self.index, self.now, &Event::WatchdogKick { rip })?;
        Ok(Status::Running)
    }

    pub(super) fn crashed(&mut self, step: u64, kind: CrashKind) -> Result<Status> {
        let report = self.crash_report(step, kind);
        Ok(Status::Stopped(Stop::Crashed(Box::new(report))))
    }

    pub(super) fn crash_report(&mut self, step: u64, kind: CrashKind) -> CrashReport {
        if let Some(line) = self.console_lines.flush() {
            self.pending_lines.push((self.now, line));
        }
        let regs = match (self.vcpu.get_regs(), self.vcpu.get_sregs()) {
            (Ok(r), Ok(s)) => Some((r, s)),
            _ => None,
        };
        let code = regs
            .as_ref()
            .and_then(|(r, s)| crash::code_at(&self.mem, s, r.rip));
        CrashReport {
            machine: self.name.clone(),
            step,
            vtime_ns: self.now,
            kind,
            regs,
            code,
            console_tail: self.console_lines.tail(),
        }
    }
}

/// A control-channel event as the ABI numbers it (`docs/guest-abi.md`), for the trace.
fn control_code(event: &ControlEvent) -> (u8, u32) {
    match event {
        ControlEvent::Ready => (abi::control::READY, 0),
        ControlEvent::Exit(status) => (abi::control::EXIT, (*status).into()),
        ControlEvent::Panic => (abi::control::PANIC, 0),
        ControlEvent::PowerOff => (abi::control::POWEROFF, 0),
        ControlEvent::Restart => (abi::control::RESTART, 0),
        ControlEvent::Identity(frame) => (abi::control::IDENTITY, *frame),
        // The raw value, whatever the guest wrote.
        ControlEvent::Unknown(value) => (0, *value),
    }
}

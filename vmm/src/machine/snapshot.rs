//! A machine's whole state at an exit, and a machine restored from it.
//!
//! Saving happens only where nothing is half-done: the exit's instruction is completed first
//! (`KVM_RUN` with `immediate_exit`), raised interrupt lines are drained into the PIC, and no
//! frame or disk request may be on its way (a template is taken where none are).

use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};
use simvm_devices::pic::Pic;
use simvm_devices::pvclock::SimvmPorts;
use simvm_devices::serial::Console;
use simvm_devices::snapshot::Snapshot;
use simvm_devices::virtio::block::VirtioBlock;
use simvm_devices::virtio::mmio::VirtioMmio;
use simvm_devices::virtio::net::VirtioNet;
use vm_memory::GuestMemoryMmap;

use super::{check_memory_size, Machine, MachineConfig};
use crate::error::{Error, Result};
use crate::vcpu_state::VcpuState;

type NetState = <VirtioMmio<VirtioNet> as Snapshot>::State;
type BlockState = <VirtioMmio<VirtioBlock> as Snapshot>::State;

/// A machine's clocks: world time, power-on time and the guest's clock at power-on (see
/// `Machine::guest_now`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineClock {
    pub now_ns: u64,
    pub epoch_ns: u64,
    pub offset_ns: u64,
    /// The clock's rate since power-on (absent from snapshots taken before clock faults).
    #[serde(default)]
    pub skew: crate::skew::ClockSkew,
}

/// Everything a restore needs besides the memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineState {
    /// The guest's clock at the save; a restored guest's clock goes on from here.
    pub guest_now_ns: u64,
    pub vcpu: VcpuState,
    pic: <Pic as Snapshot>::State,
    ports: <SimvmPorts as Snapshot>::State,
    console: <Console as Snapshot>::State,
    net: Option<NetState>,
    disks: Vec<BlockState>,
}

fn device_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Snapshot(format!("{what}: {e}"))
}

impl Machine {
    /// Saves the machine as it stands after its last exit. `msr_indices` are the MSRs to keep
    /// (`vcpu_state::saved_msrs`).
    pub fn save_state(&mut self, msr_indices: &[u32]) -> Result<MachineState> {
        self.complete_exit()?;
        self.drain_irq_lines();
        if !self.outbox.is_empty() || !self.block_requests.is_empty() {
            return Err(Error::Snapshot(
                "frames or disk requests are on their way out of the machine".into(),
            ));
        }
        let net = match self.net {
            Some(id) => {
                let net = self
                    .mmio
                    .get::<VirtioMmio<VirtioNet>>(id)
                    .ok_or_else(|| Error::Snapshot("the NIC is missing from its window".into()))?;
                if net.device().has_pending_tx() {
                    return Err(Error::Snapshot("the NIC has frames to send".into()));
                }
                Some(net.save())
            }
            None => None,
        };
        let mut disks = Vec::with_capacity(self.disks.len());
        for (i, &id) in self.disks.iter().enumerate() {
            let blk = self
                .mmio
                .get::<VirtioMmio<VirtioBlock>>(id)
                .ok_or_else(|| Error::Snapshot(format!("disk {i} is missing from its window")))?;
            if blk.device().has_in_flight() {
                return Err(Error::Snapshot(format!(
                    "disk {} has requests in flight",
                    super::disk_name(i)
                )));
            }
            disks.push(blk.save());
        }
        let console = self
            .pio
            .get::<Console>(self.console)
            .ok_or_else(|| Error::Snapshot("the console is missing".into()))?
            .save();
        Ok(MachineState {
            guest_now_ns: self.guest_now(),
            vcpu: VcpuState::save(&self.vcpu, msr_indices)?,
            pic: self.pic.save(),
            ports: self.ports.save(),
            console,
            net,
            disks,
        })
    }

    /// Lets KVM finish the instruction of the last exit (an `out` is done only when the vCPU
    /// next enters), without running the guest any further.
    fn complete_exit(&mut self) -> Result<()> {
        self.vcpu.set_kvm_immediate_exit(1);
        let result = match self.vcpu.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(Error::Kvm {
                op: "KVM_RUN (immediate exit)",
                source: e,
            }),
            Ok(exit) => Err(Error::Snapshot(format!(
                "completing the last exit ran the guest to another exit: {exit:?}"
            ))),
        };
        self.vcpu.set_kvm_immediate_exit(0);
        result
    }

    /// Builds the machine `config` describes with `mem` (the saved memory, mapped copy on
    /// write) and puts `state` into it. The devices keep what `config` gives them (the MAC, the
    /// disk serials, the wall clock). The guest's clock goes on from the saved one: from power-on
    /// at `config.epoch_ns` (a template), or with the saved machine's `clock` (a world snapshot).
    pub fn restore(
        kvm: &Kvm,
        config: MachineConfig,
        mem: GuestMemoryMmap,
        state: &MachineState,
        clock: Option<MachineClock>,
    ) -> Result<Self> {
        check_memory_size(config.mem_size)?;
        let clock = clock.unwrap_or(MachineClock {
            now_ns: config.epoch_ns,
            epoch_ns: config.epoch_ns,
            offset_ns: state.guest_now_ns,
            skew: crate::skew::ClockSkew::with_rate(config.clock_ppm),
        });
        // The guest reads CLOCK_REALTIME as wall base + its clock, which was `offset_ns` at
        // power-on: the base goes back by as much, so the guest reads the world's wall time.
        let wall_base_ns = config.wall_base_ns.saturating_sub(clock.offset_ns);
        let (mut machine, _windows) = Self::assemble(
            kvm,
            MachineConfig {
                wall_base_ns,
                epoch_ns: clock.epoch_ns,
                ..config
            },
            mem,
        )?;
        machine.restore_devices(state)?;
        state.vcpu.restore(&machine.vcpu)?;
        machine.now = clock.now_ns;
        machine.epoch = clock.epoch_ns;
        machine.clock_offset = clock.offset_ns;
        machine.skew = clock.skew;
        Ok(machine)
    }

    /// The machine's clocks, for a world snapshot.
    pub fn clock(&self) -> MachineClock {
        MachineClock {
            now_ns: self.now,
            epoch_ns: self.epoch,
            offset_ns: self.clock_offset,
            skew: self.skew,
        }
    }

    /// Hands the guest kernel new entropy through the clock page; it reseeds its RNG at its
    /// next timer interrupt (docs/guest-abi.md).
    pub fn reseed_guest(&mut self, entropy: [u8; 32]) {
        self.ports.reseed(entropy);
    }

    /// What a restored machine had reported before the snapshot: READY and the command's
    /// status.
    pub fn set_reported(&mut self, ready_at: Option<u64>, exit_status: Option<u8>) {
        self.ready_at = ready_at;
        self.exit_status = exit_status;
    }

    fn restore_devices(&mut self, state: &MachineState) -> Result<()> {
        let mem = &self.mem;
        if state.net.is_some() != self.net.is_some() || state.disks.len() != self.disks.len() {
            return Err(Error::Snapshot(format!(
                "saved machine has {} NIC and {} disks; this one {} and {}",
                u8::from(state.net.is_some()),
                state.disks.len(),
                u8::from(self.net.is_some()),
                self.disks.len()
            )));
        }
        self.pic
            .restore(&state.pic, mem)
            .map_err(|e| device_error("interrupt controller", e))?;
        self.ports
            .restore(&state.ports, mem)
            .map_err(|e| device_error("simvm ports", e))?;
        self.pio
            .get_mut::<Console>(self.console)
            .ok_or_else(|| Error::Snapshot("the console is missing".into()))?
            .restore(&state.console, mem)
            .map_err(|e| device_error("console", e))?;
        if let (Some(id), Some(saved)) = (self.net, &state.net) {
            self.mmio
                .get_mut::<VirtioMmio<VirtioNet>>(id)
                .ok_or_else(|| Error::Snapshot("the NIC is missing from its window".into()))?
                .restore(saved, mem)
                .map_err(|e| device_error("virtio-net", e))?;
        }
        for (i, (&id, saved)) in self.disks.iter().zip(&state.disks).enumerate() {
            self.mmio
                .get_mut::<VirtioMmio<VirtioBlock>>(id)
                .ok_or_else(|| Error::Snapshot(format!("disk {i} is missing from its window")))?
                .restore(saved, mem)
                .map_err(|e| device_error(&super::disk_name(i), e))?;
        }
        Ok(())
    }

    /// Answers the identity request the saved machine was stopped at: the restored guest
    /// continues right after it.
    pub fn answer_identity(&mut self, identity_frame: u32) -> Result<()> {
        if self.config.boot.is_none() {
            return Err(Error::Snapshot(
                "a machine restored from a template needs boot data".into(),
            ));
        }
        self.write_identity(identity_frame).map_err(|addr| {
            Error::Snapshot(format!("the identity buffer at {addr:#x} lies outside RAM"))
        })
    }
}

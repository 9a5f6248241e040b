//! A vCPU's architectural state, saved from one VM and restored into another (machine
//! templates).
//!
//! What is saved is what the guest can observe: general and special registers, the x87/SSE
//! state, pending exceptions and interrupts, debug registers and the MSRs KVM lists. The FPU
//! goes through `KVM_GET/SET_FPU` (the FXSAVE layout): simvm guests run with `noxsave`, and on
//! PVM hosts `KVM_GET_XSAVE` returns a default image rather than the guest's state.
//!
//! MSRs are restored one at a time: a batched `KVM_SET_MSRS` stops at the first MSR it refuses
//! and silently drops the rest. KVM's own paravirtual MSRs are skipped: simvm guests cannot
//! enable them (CPUID hides the KVM leaves), and PVM hosts refuse to set them.

use kvm_bindings::{kvm_debugregs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Everything of a vCPU a restore needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: FpuState,
    events: kvm_vcpu_events,
    debugregs: kvm_debugregs,
    /// `(index, value)` of every MSR that could be read.
    msrs: Vec<(u32, u64)>,
}

/// `kvm_fpu`, which kvm-bindings does not serialize.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct FpuState {
    fpr: Vec<[u8; 16]>,
    fcw: u16,
    fsw: u16,
    ftwx: u8,
    last_opcode: u16,
    last_ip: u64,
    last_dp: u64,
    xmm: Vec<[u8; 16]>,
    mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(fpu: &kvm_fpu) -> Self {
        Self {
            fpr: fpu.fpr.to_vec(),
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftwx: fpu.ftwx,
            last_opcode: fpu.last_opcode,
            last_ip: fpu.last_ip,
            last_dp: fpu.last_dp,
            xmm: fpu.xmm.to_vec(),
            mxcsr: fpu.mxcsr,
        }
    }
}

impl FpuState {
    fn to_kvm(&self) -> Result<kvm_fpu> {
        let mut fpu = kvm_fpu {
            fcw: self.fcw,
            fsw: self.fsw,
            ftwx: self.ftwx,
            last_opcode: self.last_opcode,
            last_ip: self.last_ip,
            last_dp: self.last_dp,
            mxcsr: self.mxcsr,
            ..Default::default()
        };
        if self.fpr.len() != fpu.fpr.len() || self.xmm.len() != fpu.xmm.len() {
            return Err(Error::Snapshot(format!(
                "FPU state has {} x87 and {} XMM registers, expected {} and {}",
                self.fpr.len(),
                self.xmm.len(),
                fpu.fpr.len(),
                fpu.xmm.len()
            )));
        }
        fpu.fpr.copy_from_slice(&self.fpr);
        fpu.xmm.copy_from_slice(&self.xmm);
        Ok(fpu)
    }
}

/// KVM's paravirtual MSRs (`0x4b564d00..`) and its original clock MSRs (`0x11`, `0x12`).
fn is_kvm_paravirtual(index: u32) -> bool {
    index >> 8 == 0x4b_564d || index == 0x11 || index == 0x12
}

/// The MSRs a save reads: those KVM lists, less its paravirtual ones.
pub fn saved_msrs(kvm: &Kvm) -> Result<Vec<u32>> {
    let list = kvm
        .get_msr_index_list()
        .map_err(Error::kvm("KVM_GET_MSR_INDEX_LIST"))?;
    Ok(list
        .as_slice()
        .iter()
        .copied()
        .filter(|&index| !is_kvm_paravirtual(index))
        .collect())
}

impl VcpuState {
    /// Reads `vcpu`'s state. Call it only when no exit is half-done: after an I/O exit, first
    /// let KVM complete the instruction (`KVM_RUN` with `immediate_exit`).
    pub fn save(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<Self> {
        let regs = vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        let fpu = vcpu.get_fpu().map_err(Error::kvm("KVM_GET_FPU"))?;
        let events = vcpu
            .get_vcpu_events()
            .map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?;
        let debugregs = vcpu
            .get_debug_regs()
            .map_err(Error::kvm("KVM_GET_DEBUGREGS"))?;
        let mut msrs = Vec::with_capacity(msr_indices.len());
        for &index in msr_indices {
            if let Some(value) = read_msr(vcpu, index)? {
                msrs.push((index, value));
            }
        }
        Ok(Self {
            regs,
            sregs,
            fpu: FpuState::from(&fpu),
            events,
            debugregs,
            msrs,
        })
    }

    /// Writes the state into a fresh `vcpu` (with the CPUID it was saved under already set).
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<()> {
        // Special registers first: they set the mode the general registers are read in.
        vcpu.set_sregs(&self.sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs)
            .map_err(Error::kvm("KVM_SET_REGS"))?;
        vcpu.set_fpu(&self.fpu.to_kvm()?)
            .map_err(Error::kvm("KVM_SET_FPU"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(Error::kvm("KVM_SET_DEBUGREGS"))?;
        for &(index, value) in &self.msrs {
            write_msr(vcpu, index, value)?;
        }
        // Last: pending events refer to the state above.
        vcpu.set_vcpu_events(&self.events)
            .map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    /// The instruction pointer the restored vCPU continues at.
    pub fn rip(&self) -> u64 {
        self.regs.rip
    }
}

/// One MSR; `None` if KVM cannot read it on this host.
fn read_msr(vcpu: &VcpuFd, index: u32) -> Result<Option<u64>> {
    let entry = kvm_msr_entry {
        index,
        ..Default::default()
    };
    let mut msrs = kvm_bindings::Msrs::from_entries(&[entry])
        .map_err(|e| Error::Snapshot(format!("MSR list: {e:?}")))?;
    let read = vcpu
        .get_msrs(&mut msrs)
        .map_err(Error::kvm("KVM_GET_MSRS"))?;
    Ok((read == 1).then(|| msrs.as_slice()[0].data))
}

fn write_msr(vcpu: &VcpuFd, index: u32, value: u64) -> Result<()> {
    let entry = kvm_msr_entry {
        index,
        data: value,
        ..Default::default()
    };
    let msrs = kvm_bindings::Msrs::from_entries(&[entry])
        .map_err(|e| Error::Snapshot(format!("MSR list: {e:?}")))?;
    let written = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    if written != 1 {
        return Err(Error::Snapshot(format!(
            "KVM refused to restore MSR {index:#x} = {value:#x}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpu_state_round_trips_through_json() {
        let mut fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            last_ip: 0xdead_beef,
            ..Default::default()
        };
        fpu.xmm[15] = [7; 16];
        fpu.fpr[3] = [9; 16];
        let state = FpuState::from(&fpu);
        let json = serde_json::to_string(&state).unwrap();
        let back: FpuState = serde_json::from_str(&json).unwrap();
        let again = back.to_kvm().unwrap();
        assert_eq!(again.xmm[15], [7; 16]);
        assert_eq!(again.fpr[3], [9; 16]);
        assert_eq!(
            (again.fcw, again.mxcsr, again.last_ip),
            (0x37f, 0x1f80, 0xdead_beef)
        );
    }

    #[test]
    fn fpu_state_with_the_wrong_register_count_is_refused() {
        let mut state = FpuState::from(&kvm_fpu::default());
        state.xmm.pop();
        assert!(matches!(state.to_kvm(), Err(Error::Snapshot(_))));
    }

    #[test]
    fn kvm_paravirtual_msrs_are_recognised() {
        assert!(is_kvm_paravirtual(0x4b56_4d06));
        assert!(is_kvm_paravirtual(0x4b56_4d00));
        assert!(is_kvm_paravirtual(0x11));
        assert!(!is_kvm_paravirtual(0xc000_0080)); // EFER
        assert!(!is_kvm_paravirtual(0x10)); // TSC
    }
}

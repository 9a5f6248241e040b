//! The few KVM ioctls that kvm-ioctls does not wrap.

use kvm_bindings::{kvm_interrupt, KVMIO};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);

/// Queues external interrupt `vector` for delivery at the next guest entry (`KVM_INTERRUPT`).
///
/// Only valid without an in-kernel irqchip and when the last exit reported
/// `ready_for_interrupt_injection`; simvm calls it only then, so injection happens at an exit,
/// a deterministic point of the guest's execution.
pub fn inject_interrupt(vcpu: &VcpuFd, vector: u8) -> errno::Result<()> {
    let irq = kvm_interrupt {
        irq: u32::from(vector),
    };
    // SAFETY: `vcpu` is a valid vCPU fd, KVM_INTERRUPT reads exactly one `kvm_interrupt` from the
    // pointer, which lives for the duration of the call, and the return value is checked.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) };
    if ret == 0 {
        Ok(())
    } else {
        Err(errno::Error::last())
    }
}

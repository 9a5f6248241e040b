//! Who clears and copies the guest kernel's pages.
//!
//! On a PVM host the guest kernel's instructions run in KVM's instruction emulator, where each
//! iteration of `clear_page()`'s `rep stosq` costs about as much as a whole instruction: 512 per
//! page, for every page a fault or a zeroed allocation takes; a copy-on-write fault's page copy
//! costs as much or more, and so do `memcpy()` between kernel buffers (the initramfs unpacked
//! at boot) and initialising the memory map at boot a `struct page` at a time. An `outl` of the
//! frame number to [`abi::PORT_CLEAR_PAGE`] or [`abi::PORT_COPY_PAGE`], of a length to
//! [`abi::PORT_COPY_BYTES`], or of a record's shape to [`abi::PORT_FILL_RECORDS`] costs one
//! exit, and simvm zeroes, copies or fills the memory. On VMX and SVM hosts the guest does each
//! natively in a fraction of an exit's cost, so there it does.
//!
//! The choice reaches the guest kernel through the host page (`docs/guest-abi.md`), which no
//! guest program can map, and the exits charge no virtual time and take no interrupt: a seed
//! runs the same whoever does the page work (`tests/profile.rs` compares the digests).
//!
//! [`abi::PORT_CLEAR_PAGE`]: simvm_devices::abi::PORT_CLEAR_PAGE
//! [`abi::PORT_COPY_PAGE`]: simvm_devices::abi::PORT_COPY_PAGE
//! [`abi::PORT_COPY_BYTES`]: simvm_devices::abi::PORT_COPY_BYTES
//! [`abi::PORT_FILL_RECORDS`]: simvm_devices::abi::PORT_FILL_RECORDS

use std::path::Path;

/// Who clears and copies the guest kernel's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageWork {
    /// The guest, as Linux does anywhere.
    Guest,
    /// simvm, at the guest kernel's request: one exit a page, copy or fill.
    Host,
}

impl PageWork {
    /// [`PageWork::Host`] where the guest kernel's code is emulated (a PVM host), else
    /// [`PageWork::Guest`].
    pub fn for_this_host() -> Self {
        Self::for_host(Path::new(PVM_MODULE).exists())
    }

    fn for_host(kernel_code_emulated: bool) -> Self {
        if kernel_code_emulated {
            Self::Host
        } else {
            Self::Guest
        }
    }
}

/// Present while the host's KVM is PVM (`kvm_pvm`).
const PVM_MODULE: &str = "/sys/module/kvm_pvm";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_host_that_emulates_kernel_code_does_page_work_for_the_guest() {
        assert_eq!(PageWork::for_host(true), PageWork::Host);
        assert_eq!(PageWork::for_host(false), PageWork::Guest);
    }
}

//! Who zeroes the pages a guest kernel hands out.
//!
//! On a PVM host the guest kernel's instructions run in KVM's instruction emulator, where each
//! iteration of `clear_page()`'s `rep stosq` costs about as much as a whole instruction: 512 per
//! page, for every page a fault or a zeroed allocation takes. An `outl` of the frame number to
//! [`abi::PORT_CLEAR_PAGE`] costs one exit, and simvm zeroes the page. On VMX and SVM hosts the
//! guest clears a page natively in a fraction of an exit's cost, so there it does.
//!
//! The choice reaches the guest kernel through the host page (`docs/guest-abi.md`), which no
//! guest program can map, and the exit charges no virtual time and takes no interrupt: a seed
//! runs the same whoever clears the pages (`tests/profile.rs` compares the digests).
//!
//! [`abi::PORT_CLEAR_PAGE`]: simvm_devices::abi::PORT_CLEAR_PAGE

use std::path::Path;

/// Who zeroes the guest kernel's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageClearing {
    /// The guest, as Linux does anywhere.
    Guest,
    /// simvm, at the guest kernel's request: one exit a page.
    Host,
}

impl PageClearing {
    /// [`PageClearing::Host`] where the guest kernel's code is emulated (a PVM host), else
    /// [`PageClearing::Guest`].
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
    fn only_a_host_that_emulates_kernel_code_clears_pages_for_the_guest() {
        assert_eq!(PageClearing::for_host(true), PageClearing::Host);
        assert_eq!(PageClearing::for_host(false), PageClearing::Guest);
    }
}

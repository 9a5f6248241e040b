//! Ctrl-C (SIGINT) and SIGTERM stop `simvm run` at its next virtual instant, so that the run
//! ends as any other does: trace, pcap and profile written, summary printed, and a line that
//! replays it to where it stopped. A second signal ends the process at once (the handler
//! resets itself), for a step that never finishes.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: std::os::raw::c_int) {
    // Async-signal-safe: an atomic store and nothing else.
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Installs the handler for SIGINT and SIGTERM and returns the flag it sets.
pub fn stop_on_signal() -> Result<&'static AtomicBool, String> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESETHAND | SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and
        // replaces the default action (ending the process) that no other part of simvm run
        // relies on.
        unsafe { sigaction(signal, &action) }
            .map_err(|e| format!("cannot handle {signal}: {e}"))?;
    }
    Ok(&REQUESTED)
}

//! Guest tunings: changes to how a guest runs that make it faster without changing what it
//! computes (docs/performance.md "Guest tunings"). Each is on by default and has a switch, so a
//! benchmark can run the same scenario and seed with and without it.

use crate::profile::Symbols;

/// Which guest tunings a world's machines get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTuning {
    /// Clock reads in user mode through the vDSO (`clock_gettime`, `gettimeofday`) instead of
    /// system calls: docs/guest-abi.md "The vDSO clock". Off: `simvm_vdso=0`.
    pub vdso_clock: bool,
    /// A source port perturbation table of 256 entries instead of 65536, so the first
    /// `connect()` fills 1 KiB with random bytes rather than 256 KiB (guest patch 0014).
    /// On: `inet_perturb_order=8`.
    pub small_port_table: bool,
    /// Exceptions and interrupts from user mode enter the kernel on the task stack, so the
    /// entry code does not copy the registers there from the per-CPU entry stack (guest patch
    /// 0018; under PVM every system call is such an exception). Off: `simvm_task_stack=0`.
    pub task_stack_entry: bool,
    /// Every task starts with a timer slack of [`TIMER_SLACK_NS`] instead of Linux's 50 µs, so
    /// timers that fall within it expire together in one interrupt and a guest whose threads
    /// sleep on many short timers (a Go runtime) wakes less often (guest patch 0019). On:
    /// `simvm_timer_slack=10000000`.
    pub timer_slack: bool,
    /// Files in tmpfs, the initramfs's rootfs among them, sit in the page cache in 2 MiB huge
    /// pages wherever a whole one fits within the file, so an executable there is mapped with
    /// PMDs: a Go binary's exec faults in and unmaps a few huge pages rather than thousands of
    /// small ones; the rest of a file is in the largest folios that end within it, mapped,
    /// copied at fork and unmapped a folio at a time (guest patches 0020 and 0027, and
    /// `CONFIG_TRANSPARENT_HUGEPAGE` in the speed kernel; the compact kernel lacks it, and
    /// [`GuestTuning::kernel_args_for`] leaves it out). On:
    /// `transparent_hugepage_tmpfs=within_size`.
    pub huge_page_cache: bool,
    /// Anonymous memory is faulted in [`ANON_FOLIO_SIZES`] at a time where the mapping has room
    /// (the largest that fits, else 4 KiB), so a new process's heap and stacks take a fault per
    /// 256 KiB instead of per page: Linux's multi-size transparent huge pages, which need
    /// `CONFIG_TRANSPARENT_HUGEPAGE` (the speed kernel). On: `thp_anon=16K,64K,256K:always`.
    pub large_anon_folios: bool,
    /// virtio-net reclaims the buffers of sent frames when it sends the next one, instead of
    /// taking an interrupt for their completion: Linux's `napi_tx=0`, where the socket gives up
    /// a frame's memory as it goes out. An etcd member sends about as many frames as it
    /// receives, so this takes over a third of its interrupts away. On: `virtio_net.napi_tx=0`.
    pub tx_reclaim_on_send: bool,
    /// TCP stops a socket's retransmission or delayed-ACK timer when it clears it (the data
    /// was acknowledged, the ACK went out) instead of leaving it to fire later and find
    /// nothing to do (guest patch 0025): each such firing is a wake-up of an idle machine,
    /// one 40 ms after every message an etcd follower reads. On: `inet_stop_cleared_timers=1`.
    pub stop_cleared_timers: bool,
    /// The kernel compacts memory only when an allocation asks for it, not proactively:
    /// Linux's `kcompactd` otherwise wakes every 500 ms to measure fragmentation (the speed
    /// kernel has compaction, for its huge pages), two wake-ups and their ticks a second on
    /// every idle machine. On: `sysctl.vm.compaction_proactiveness=0`, with which `kcompactd`
    /// sleeps until it is woken.
    pub lazy_compaction: bool,
    /// A read fault on a file maps [`FAULT_AROUND_BYTES`] of the page cache around it instead
    /// of Linux's 64 KiB, so a program's start takes fewer faults for its binary (guest patch
    /// 0028 parses the parameter; the rest of a tmpfs file sits in large folios, which map a
    /// folio at a time, guest patch 0027). On: `fault_around_bytes=262144`.
    pub wide_fault_around: bool,
    /// The scheduler's clock counts as stable, as it does on a host with a reliable TSC:
    /// `sched_clock()` reads simvm's virtual clock (guest patch 0006), which is monotonic on
    /// the guest's one CPU, so Linux's filtering of an unstable one (per-CPU clock data
    /// rebased at every tick and every wake-up from idle, a compare-and-exchange loop at every
    /// read) only costs emulated instructions: about 3% of an etcd member's time. Off:
    /// `tsc=unstable`, which marks it unstable because Linux's own `sched_clock()` would read
    /// the TSC (the guest never uses the TSC either way: simvm clears the feature).
    pub stable_sched_clock: bool,
}

impl Default for GuestTuning {
    fn default() -> Self {
        Self {
            vdso_clock: true,
            small_port_table: true,
            task_stack_entry: true,
            timer_slack: true,
            huge_page_cache: true,
            large_anon_folios: true,
            tx_reclaim_on_send: true,
            stop_cleared_timers: true,
            lazy_compaction: true,
            wide_fault_around: true,
            stable_sched_clock: true,
        }
    }
}

/// The timer slack every guest task starts with under [`GuestTuning::timer_slack`]: timers
/// may expire up to this late, as Linux allows any timer to (a task's own `prctl` or
/// /proc/PID/timerslack_ns still sets another). 10 ms, the granularity of a kernel timer at
/// `HZ=100`, lets a Go runtime's `sysmon` sleep end with the program's next timer instead of
/// waking the guest on its own: an idle etcd member wakes a third less often than with 2 ms
/// (docs/performance.md "Timer slack").
pub const TIMER_SLACK_NS: u64 = 10_000_000;

/// The folio sizes anonymous memory is faulted in with [`GuestTuning::large_anon_folios`].
/// Clearing a folio costs about as much per byte as faulting it page by page costs per page
/// here, so a larger folio pays only where a program touches most of it: 256 KiB ran a Go
/// program's start-up fastest, 1 MiB and 2 MiB less so (docs/performance.md).
pub const ANON_FOLIO_SIZES: &str = "16K,64K,256K";

/// How much of a file a read fault maps around it with [`GuestTuning::wide_fault_around`]:
/// 256 KiB ran busybox's fork and exec 8% and a Go program's start 4% faster than Linux's
/// 64 KiB; 1 MiB gained no more (docs/performance.md "Wide fault-around").
pub const FAULT_AROUND_BYTES: u64 = 256 << 10;

/// log2 of the port perturbation table's entries with [`GuestTuning::small_port_table`].
const SMALL_PORT_TABLE_ORDER: u32 = 8;

impl GuestTuning {
    /// Every tuning off: guests run as they did before any existed.
    pub const NONE: Self = Self {
        vdso_clock: false,
        small_port_table: false,
        task_stack_entry: false,
        timer_slack: false,
        huge_page_cache: false,
        large_anon_folios: false,
        tx_reclaim_on_send: false,
        stop_cleared_timers: false,
        lazy_compaction: false,
        wide_fault_around: false,
        stable_sched_clock: false,
    };

    /// The guest kernel parameters that apply the tuning.
    pub fn kernel_args(&self) -> String {
        join(self.params().into_iter().map(|(arg, _)| arg))
    }

    /// The parameters of [`Self::kernel_args`] that `kernel` parses: a parameter whose setup
    /// function is not in its `System.map` (the compact kernel has no transparent huge pages)
    /// would reach init's environment as an unknown one, and its tuning cannot apply there
    /// anyway. A kernel without a `System.map` gets every parameter.
    pub fn kernel_args_for(&self, kernel: &Symbols) -> String {
        join(
            self.params()
                .into_iter()
                .filter(|(_, setup)| kernel.is_empty() || kernel.has_function(setup))
                .map(|(arg, _)| arg),
        )
    }

    /// Each kernel parameter the tuning passes, with the kernel function whose presence says the
    /// kernel parses it: its setup function, or for a built-in driver's parameter the driver's
    /// probe.
    fn params(&self) -> Vec<(String, &'static str)> {
        let mut params = Vec::new();
        if !self.vdso_clock {
            params.push(("simvm_vdso=0".to_string(), "simvm_vdso_setup"));
        }
        if self.small_port_table {
            params.push((
                format!("inet_perturb_order={SMALL_PORT_TABLE_ORDER}"),
                "inet_perturb_order_setup",
            ));
        }
        if !self.task_stack_entry {
            params.push(("simvm_task_stack=0".to_string(), "simvm_task_stack_setup"));
        }
        if self.timer_slack {
            params.push((
                format!("simvm_timer_slack={TIMER_SLACK_NS}"),
                "simvm_timer_slack_setup",
            ));
        }
        if self.huge_page_cache {
            params.push((
                "transparent_hugepage_tmpfs=within_size".to_string(),
                "setup_transparent_hugepage_tmpfs",
            ));
        }
        if self.large_anon_folios {
            params.push((
                format!("thp_anon={ANON_FOLIO_SIZES}:always"),
                "setup_thp_anon",
            ));
        }
        if self.tx_reclaim_on_send {
            // A built-in driver's parameter has no setup function of its own: the driver's
            // probe says the kernel has it.
            params.push(("virtio_net.napi_tx=0".to_string(), "virtnet_probe"));
        }
        if self.stop_cleared_timers {
            params.push((
                "inet_stop_cleared_timers=1".to_string(),
                "inet_stop_cleared_timers_setup",
            ));
        }
        if self.lazy_compaction {
            // A sysctl set from the command line has no setup function: compaction's daemon
            // says the kernel has the setting.
            params.push((
                "sysctl.vm.compaction_proactiveness=0".to_string(),
                "kcompactd",
            ));
        }
        if self.wide_fault_around {
            params.push((
                format!("fault_around_bytes={FAULT_AROUND_BYTES}"),
                "fault_around_bytes_setup",
            ));
        }
        if !self.stable_sched_clock {
            params.push(("tsc=unstable".to_string(), "tsc_setup"));
        }
        params
    }
}

fn join(args: impl Iterator<Item = String>) -> String {
    args.collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tuning_has_its_kernel_argument() {
        assert_eq!(
            GuestTuning::default().kernel_args(),
            "inet_perturb_order=8 simvm_timer_slack=10000000 transparent_hugepage_tmpfs=within_size \
             thp_anon=16K,64K,256K:always virtio_net.napi_tx=0 inet_stop_cleared_timers=1 \
             sysctl.vm.compaction_proactiveness=0 fault_around_bytes=262144"
        );
        assert_eq!(
            GuestTuning::NONE.kernel_args(),
            "simvm_vdso=0 simvm_task_stack=0 tsc=unstable"
        );
        let vdso_only = GuestTuning {
            small_port_table: false,
            timer_slack: false,
            huge_page_cache: false,
            large_anon_folios: false,
            tx_reclaim_on_send: false,
            stop_cleared_timers: false,
            lazy_compaction: false,
            wide_fault_around: false,
            ..GuestTuning::default()
        };
        assert_eq!(vdso_only.kernel_args(), "");
    }

    #[test]
    fn a_kernel_gets_only_the_parameters_it_parses() {
        // The compact kernel's System.map: simvm's patches, no transparent huge pages.
        let compact = Symbols::parse(
            "ffffffff818e91a0 t simvm_task_stack_setup\n\
             ffffffff818e91c0 t simvm_vdso_setup\n\
             ffffffff818e9210 t simvm_timer_slack_setup\n\
             ffffffff818ff8b0 t inet_perturb_order_setup\n\
             ffffffff818ff900 t inet_stop_cleared_timers_setup\n\
             ffffffff8162f1a0 t virtnet_probe\n\
             ffffffff81affea0 t fault_around_bytes_setup\n\
             ffffffff81b0e5c0 t tsc_setup\n",
        );
        assert_eq!(
            GuestTuning::default().kernel_args_for(&compact),
            "inet_perturb_order=8 simvm_timer_slack=10000000 virtio_net.napi_tx=0 \
             inet_stop_cleared_timers=1 fault_around_bytes=262144"
        );
        assert_eq!(
            GuestTuning::NONE.kernel_args_for(&compact),
            "simvm_vdso=0 simvm_task_stack=0 tsc=unstable"
        );
        // Without a System.map nothing is known: every parameter goes.
        assert_eq!(
            GuestTuning::default().kernel_args_for(&Symbols::default()),
            GuestTuning::default().kernel_args()
        );
    }
}

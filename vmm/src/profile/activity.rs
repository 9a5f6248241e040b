//! What a guest kernel was doing when it was sampled: a system call (by name), a page fault,
//! an interrupt, network receive processing, a kernel thread...
//!
//! A flame graph shows this too, but only to someone who knows the kernel's entry paths; on a
//! PVM host the self time of kernel functions is flat (no function above 2% under a network
//! load), so the summary names the activity each sample belongs to instead.
//!
//! A sample belongs to its innermost context: a page fault taken inside a `read()` counts as a
//! page fault, network receive processing run on the way out of an interrupt (or inside a
//! loopback `write()`) counts as network receive. This also looks through a quirk of PVM hosts,
//! where a system call arrives as a user page fault (guest patch 0002), so every system call's
//! stack starts in `exc_page_fault`: a stack the walk rooted at `entry_SYSCALL_64` is a system
//! call's, its page-fault frames the call's entry.

/// The activity of one kernel stack, its frames' function names innermost first.
pub fn kernel_activity<'a>(innermost_first: impl IntoIterator<Item = &'a str>) -> String {
    let frames: Vec<&str> = innermost_first.into_iter().collect();
    for (depth, &name) in frames.iter().enumerate() {
        let activity = match name {
            "net_rx_action" => "network receive (softirq)",
            "handle_softirqs" => "other softirq",
            "handle_mm_fault" => "page fault",
            // The profiler roots a system call that arrived as a page fault at
            // `entry_SYSCALL_64` (guest_stack.rs): the fault's entry is then the call's.
            "exc_page_fault" | "asm_exc_page_fault" => {
                let outer = frames[depth..]
                    .iter()
                    .find(|&&f| f != "exc_page_fault" && f != "asm_exc_page_fault");
                if outer == Some(&"entry_SYSCALL_64") {
                    "system call entry and exit"
                } else {
                    "page fault"
                }
            }
            "__common_interrupt" | "common_interrupt" | "asm_common_interrupt" => "interrupt",
            // A process's threads die on their way back to user mode (a fatal signal, or the
            // group exit another thread started), and the last one tears down the address
            // space: that is exit work, not the system call it returned from.
            "do_exit" => "process exit",
            "arch_do_signal_or_restart" => "signal delivery",
            "do_syscall_64" => "system call entry and exit",
            "kthread" => "kernel thread",
            // do_idle() ends in a jump to schedule_idle(), so the switch from the idle task to
            // a woken one is under cpu_startup_entry()'s frame, not do_idle()'s.
            "do_idle" | "cpu_startup_entry" => "idle loop",
            // The entry code's own instructions, shared by every exception, interrupt and (on
            // PVM hosts) system call; its frames tell nothing of what entered it.
            "error_entry"
            | "error_return"
            | "swapgs_restore_regs_and_return_to_usermode"
            | "restore_regs_and_return_to_kernel" => "kernel entry and exit",
            "start_kernel" | "x86_64_start_kernel" => "boot",
            _ => match name.strip_prefix("__x64_sys_") {
                Some(call) => return format!("system call {call}"),
                None => continue,
            },
        };
        return activity.to_string();
    }
    "other kernel code".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(outermost_first: &str) -> String {
        kernel_activity(outermost_first.split(';').rev())
    }

    #[test]
    fn a_system_call_is_named_even_though_it_arrives_as_a_page_fault() {
        assert_eq!(
            activity("asm_exc_page_fault;exc_page_fault;do_syscall_64;x64_sys_call;__x64_sys_write;ksys_write;vfs_write"),
            "system call write"
        );
        assert_eq!(
            activity("asm_exc_page_fault;exc_page_fault;do_syscall_64;syscall_exit_to_user_mode"),
            "system call entry and exit"
        );
        // Sampled in the fault's entry before it dispatches the call (or after): the profiler
        // put the stack under entry_SYSCALL_64.
        assert_eq!(
            activity("entry_SYSCALL_64;asm_exc_page_fault;exc_page_fault"),
            "system call entry and exit"
        );
        assert_eq!(
            activity("entry_SYSCALL_64;asm_exc_page_fault"),
            "system call entry and exit"
        );
        // A real page fault, and one taken inside a system call.
        assert_eq!(activity("asm_exc_page_fault;exc_page_fault"), "page fault");
        assert_eq!(
            activity("entry_SYSCALL_64;asm_exc_page_fault;exc_page_fault;do_syscall_64;__x64_sys_read;_copy_to_user;asm_exc_page_fault;exc_page_fault"),
            "page fault"
        );
    }

    #[test]
    fn exiting_and_signals_are_told_apart_from_the_system_call_they_leave() {
        assert_eq!(
            activity("exc_page_fault;do_syscall_64;syscall_exit_to_user_mode;arch_do_signal_or_restart;get_signal;do_group_exit;do_exit;mmput;exit_mmap;unmap_vmas"),
            "process exit"
        );
        assert_eq!(
            activity("exc_page_fault;do_syscall_64;x64_sys_call;__x64_sys_exit_group;do_group_exit;do_exit;mmput"),
            "process exit"
        );
        assert_eq!(
            activity("exc_page_fault;do_syscall_64;syscall_exit_to_user_mode;arch_do_signal_or_restart;x64_setup_rt_frame"),
            "signal delivery"
        );
    }

    #[test]
    fn the_innermost_context_wins() {
        // A page fault while copying a read()'s data to user memory.
        assert_eq!(
            activity("exc_page_fault;do_syscall_64;__x64_sys_read;_copy_to_user;asm_exc_page_fault;exc_page_fault;handle_mm_fault;clear_page_rep"),
            "page fault"
        );
        // Loopback: the receive side runs inside the sender's write().
        assert_eq!(
            activity("do_syscall_64;__x64_sys_write;tcp_sendmsg;do_softirq;handle_softirqs;net_rx_action;tcp_v4_rcv"),
            "network receive (softirq)"
        );
        assert_eq!(
            activity("common_interrupt;irq_exit_rcu;handle_softirqs;run_timer_softirq"),
            "other softirq"
        );
        assert_eq!(
            activity("common_interrupt;__common_interrupt;handle_level_irq;vring_interrupt"),
            "interrupt"
        );
    }

    #[test]
    fn threads_idle_boot_and_the_rest() {
        assert_eq!(
            activity("ret_from_fork_asm;ret_from_fork;kthread;worker_thread"),
            "kernel thread"
        );
        assert_eq!(
            activity("common_startup_64;x86_64_start_kernel;start_kernel;cpu_startup_entry;do_idle;default_idle"),
            "idle loop"
        );
        assert_eq!(
            activity("common_startup_64;x86_64_start_kernel;start_kernel;rest_init;cpu_startup_entry;schedule_idle;__schedule"),
            "idle loop"
        );
        assert_eq!(
            activity("common_startup_64;x86_64_start_kernel;start_kernel;rest_init"),
            "boot"
        );
        assert_eq!(activity("error_entry"), "kernel entry and exit");
        assert_eq!(
            activity("swapgs_restore_regs_and_return_to_usermode"),
            "kernel entry and exit"
        );
        assert_eq!(activity("sync_regs"), "other kernel code");
    }
}

//! The vDSO clock (docs/guest-abi.md "The vDSO clock"): guest programs read the clock in user
//! mode, a program spinning on it still sees time pass, deterministically, and
//! `--no-vdso-clock` turns it off; timers within the timer slack expire together, and
//! `--no-timer-slack` turns that off; an idle guest's kernel does not wake to compact memory
//! (`--no-lazy-compaction` turns that off) nor for its other housekeeping; the scheduler's
//! clock counts as stable (`--no-stable-sched-clock` marks it unstable).

use std::time::Duration;

use simvm_tests::{
    kvm_or_skip, run_guest, side_by_side, temp_dir, with_and_without, ConsoleLine, Run,
};

/// The vDSO's mappings, a 10 ms busy-wait on the vDSO clock, and a few thousand reads.
const PROBE: &str = "grep -c '\\[simvm_clock\\]' /proc/self/maps; simvm-clock spin 10; \
                     simvm-clock calls 2000";

/// The user kick page's guest-physical address, as the trace prints it.
const USER_KICK: u64 = 0xcfff_f000;

fn spin_reads(run: &Run) -> u64 {
    run.console("m1")
        .iter()
        .find_map(|l| l.strip_prefix("spin done 10 ms, "))
        .and_then(|l| l.strip_suffix(" reads"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the vDSO busy-wait did not finish:\n{}", run.all()))
}

/// The clock kicks in a trace: (through the user kick page, through the port).
fn kicks(trace: &str) -> (usize, usize) {
    let user = format!(r#""event":"mmio_write","addr":{USER_KICK},"#);
    let user_kicks = trace.lines().filter(|l| l.contains(&user)).count();
    let all_kicks = trace
        .lines()
        .filter(|l| l.contains(r#""event":"clock_kick""#))
        .count();
    (user_kicks, all_kicks - user_kicks)
}

#[test]
fn the_vdso_clock_reads_in_user_mode_and_a_spin_on_it_ends_deterministically() {
    if !kvm_or_skip("the_vdso_clock_reads_in_user_mode_and_a_spin_on_it_ends_deterministically") {
        return;
    }
    let dir = temp_dir("vdso-clock");
    let traces = [dir.join("on.jsonl"), dir.join("off.jsonl")];
    let runs = side_by_side(3, |i| {
        let trace = traces[i.min(1)].to_string_lossy().into_owned();
        let mut args = vec!["--seed", "3"];
        match i {
            0 => args.extend(["--trace", &trace]),
            2 => args.extend(["--trace", &trace, "--no-vdso-clock"]),
            _ => {}
        }
        run_guest(&args, &["sh", "-c", PROBE])
    });
    for run in &runs {
        assert_eq!(run.code, Some(0), "{}", run.all());
    }
    let (on, again, off) = (&runs[0], &runs[1], &runs[2]);

    // With the vDSO clock: mapped, and the busy-wait ends the same way on every run.
    let console = on.console("m1");
    assert_eq!(
        console.first().map(String::as_str),
        Some("1"),
        "{}",
        on.all()
    );
    assert!(
        console.iter().any(|l| l == "vdso clock_gettime"),
        "{}",
        on.all()
    );
    assert_eq!(again.field("digest"), on.field("digest"));
    assert_eq!(again.console("m1"), console);
    // The stall rule charges 1 µs a read: 10 ms of spinning is about 10 000 reads.
    let reads = spin_reads(on);
    assert!((5_000..=10_001).contains(&reads), "{reads} reads in 10 ms");

    // Its kicks come through the user kick page: one per 64 unchanged reads (the default stall
    // limit), about 12 000 reads in all here.
    let trace = std::fs::read_to_string(&traces[0]).expect("the trace");
    let (user, _) = kicks(&trace);
    assert!(user >= 150, "{user} kicks through the user kick page");

    // Without it: no mapping, and the same busy-wait kicks through the port (system calls).
    let console = off.console("m1");
    assert_eq!(
        console.first().map(String::as_str),
        Some("0"),
        "{}",
        off.all()
    );
    assert!((5_000..=10_001).contains(&spin_reads(off)));
    let trace = std::fs::read_to_string(&traces[1]).expect("the trace");
    let (user, port) = kicks(&trace);
    assert_eq!(user, 0, "user kicks with --no-vdso-clock");
    assert!(port >= 150, "{port} kicks through the port");
    assert_ne!(off.field("digest"), on.field("digest"));
}

/// How many times the kernel said it marked the scheduler's clock stable, and the TSC unstable.
const SCHED_CLOCK: &str = "dmesg | grep -c 'sched_clock: Marking stable'; \
                           dmesg | grep -c 'Marking TSC unstable'; true";

#[test]
fn the_scheduler_clock_is_stable_unless_switched_off() {
    if !kvm_or_skip("the_scheduler_clock_is_stable_unless_switched_off") {
        return;
    }
    let [on, off] = &with_and_without(&[], &["--no-stable-sched-clock"], SCHED_CLOCK);
    // The two counts; the kernel's own power-down line follows them.
    let counts = |run: &Run| run.console("m1").into_iter().take(2).collect::<Vec<_>>();
    // simvm's sched_clock() reads its virtual clock, so nothing marks it unstable and the
    // kernel switches to the stable clock's fast paths at its late initcall.
    assert_eq!(counts(on), ["1", "0"], "{}", on.all());
    // `tsc=unstable` marks the TSC unstable and, with it, the scheduler's clock for good.
    assert_eq!(counts(off), ["0", "1"], "{}", off.all());
}

/// Two sleepers 1 ms apart and a lone 1 ms sleep, each line stamped by the console.
const SLEEPERS: &str = "cat /proc/self/timerslack_ns; (usleep 10000; echo first) & \
                        (usleep 11000; echo second) & wait; echo alone; usleep 1000; echo woke";

/// The virtual time (µs) at which machine m1 printed `text`.
fn printed_at_us(run: &Run, text: &str) -> u128 {
    run.stdout
        .lines()
        .filter_map(|l| ConsoleLine::parse(l, Duration::ZERO))
        .find(|l| l.source == "m1" && l.text == text)
        .unwrap_or_else(|| panic!("m1 never printed {text:?}:\n{}", run.all()))
        .vtime
        .as_micros()
}

#[test]
fn timers_within_the_timer_slack_expire_in_one_wake_up() {
    if !kvm_or_skip("timers_within_the_timer_slack_expire_in_one_wake_up") {
        return;
    }
    let [on, off] = &with_and_without(&[], &["--no-timer-slack"], SLEEPERS);
    let apart = |run: &Run| printed_at_us(run, "second").abs_diff(printed_at_us(run, "first"));
    let lone = |run: &Run| printed_at_us(run, "woke") - printed_at_us(run, "alone");

    // With the slack (10 ms): the first sleeper's timer may fire until 20 ms, by when the
    // second's range (11-21 ms) has begun, so one interrupt wakes both; a lone 1 ms sleep on an
    // idle machine ends late in its range (1-11 ms), at its end or with a timer that falls in it.
    assert_eq!(
        on.console("m1").first().map(String::as_str),
        Some("10000000")
    );
    assert!(apart(on) < 500, "{} µs apart:\n{}", apart(on), on.all());
    assert!(lone(on) >= 3_000, "a 1 ms sleep took {} µs", lone(on));

    // Linux's 50 µs: each sleeper wakes on its own timer, 1 ms apart.
    assert_eq!(off.console("m1").first().map(String::as_str), Some("50000"));
    assert!(apart(off) >= 900, "{} µs apart:\n{}", apart(off), off.all());
    assert!(lone(off) < 2_000, "a 1 ms sleep took {} µs", lone(off));
}

/// Shell text that runs `command` and then prints the timer interrupts the guest took
/// meanwhile, as `timer interrupts N`.
fn timer_interrupts_during(command: &str) -> String {
    format!(
        "ticks() {{ awk '$1 == \"0:\" {{ print $2 }}' /proc/interrupts; }}; before=$(ticks); \
         {command}; echo \"timer interrupts $(( $(ticks) - before ))\""
    )
}

/// The count [`timer_interrupts_during`] printed.
fn timer_interrupts(run: &Run) -> u32 {
    run.console_after("m1", "timer interrupts ")
        .parse()
        .unwrap_or_else(|_| panic!("m1 printed no count:\n{}", run.all()))
}

#[test]
fn an_idle_guest_wakes_to_compact_memory_only_without_lazy_compaction() {
    if !kvm_or_skip("an_idle_guest_wakes_to_compact_memory_only_without_lazy_compaction") {
        return;
    }
    // Compaction's setting, then the timer interrupts of ten idle seconds.
    let idle_ten_seconds = format!(
        "cat /proc/sys/vm/compaction_proactiveness; {}",
        timer_interrupts_during("sleep 10")
    );
    let runs = with_and_without(&[], &["--no-lazy-compaction"], &idle_ten_seconds);
    let [on, off] = runs.map(|run| {
        let setting = run.console("m1").first().cloned().unwrap_or_default();
        (setting, timer_interrupts(&run))
    });
    assert_eq!(on.0, "0");
    assert_eq!(off.0, "20", "Linux's default proactiveness");
    // kcompactd checks fragmentation every 500 ms when proactive, and the tick after each
    // check is another interrupt: 13 with the tuning and 45 without for this seed.
    assert!(
        off.1 >= on.1 + 15,
        "without the tuning the idle guest woke {} times for timers, with it {}",
        off.1,
        on.1
    );
}

/// Ten idle minutes: the kernel's periodic housekeeping (the RNG's reseeding, the address
/// lifetime check) waits for a wake-up of another cause instead of waking the machine itself
/// (guest patch 0026). What is left is the timekeeping's own limit on how long the tick may
/// stay stopped (about 14.7 minutes for the simvm clocksource) and early-boot work.
#[test]
fn an_idle_guest_sleeps_through_the_kernels_housekeeping() {
    if !kvm_or_skip("an_idle_guest_sleeps_through_the_kernels_housekeeping") {
        return;
    }
    let run = run_guest(&[], &["sh", "-c", &timer_interrupts_during("sleep 600")]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    let ticks = timer_interrupts(&run);
    // 13 for this seed; 110 when the RNG reseeded itself every minute and the lifetime check
    // ran every two.
    assert!(
        ticks <= 30,
        "the idle guest took {ticks} timer interrupts in ten minutes"
    );
}

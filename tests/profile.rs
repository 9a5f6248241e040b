//! `simvm run --profile DIR`: exits by reason and samples of where the guests were, as folded
//! stacks, flame graphs and a summary; profiling does not change the run, nor does who clears
//! and copies the guest kernel's pages.

use simvm_tests::{image, kvm_or_skip, run_guest, side_by_side, simvm, simvm_on, temp_dir};
use simvm_vmm::profile::figures;

/// Kernel work (processes, page faults, the network) on two machines.
const WORK: &str = "for i in 1 2 3; do ls -R /bin >/dev/null; done; ping -c 2 m1 >/dev/null; \
                    echo done";

#[test]
fn a_profile_names_guest_kernel_functions_and_leaves_the_digest_alone() {
    // The profiled run also has simvm clear and copy the guests' pages and the plain one has
    // them do their own, so the digests show that neither changes the run.
    if !kvm_or_skip("a_profile_names_guest_kernel_functions_and_leaves_the_digest_alone") {
        return;
    }
    let kernel = image(None).kernel;
    let dir = temp_dir("profile");
    let out = dir.join("profile");
    let trace = dir.join("trace.jsonl");
    let (out_s, trace_s) = (
        out.to_string_lossy().into_owned(),
        trace.to_string_lossy().into_owned(),
    );
    let runs = side_by_side(2, |i| {
        let mut args = vec!["--machines", "2", "--seed", "4"];
        if i == 0 {
            args.extend([
                "--page-work",
                "host",
                "--profile",
                &out_s,
                "--profile-rate",
                "1000",
                "--trace",
                &trace_s,
            ]);
        } else {
            args.extend(["--page-work", "guest"]);
        }
        run_guest(&args, &["sh", "-c", WORK])
    });
    let (profiled, plain) = (&runs[0], &runs[1]);
    assert_eq!(profiled.code, Some(0), "{}", profiled.all());
    assert_eq!(plain.code, Some(0), "{}", plain.all());
    // Sampling interrupts the guests at host-time instants and resumes them unchanged, and a
    // page the host clears or copies is the page the guest would have made.
    assert_eq!(
        profiled.field("digest"),
        plain.field("digest"),
        "profiling or page work through the host changed the run"
    );

    // Samples in guest kernel functions, named from the kernel's System.map.
    let symbols = std::fs::read_to_string(kernel.with_file_name("System.map"))
        .expect("System.map beside the guest kernel");
    let folded = std::fs::read_to_string(out.join("run.folded")).expect("run.folded");
    // Stacks unwound through the guest kernel's frame pointers: callers, then the function.
    let stacks: Vec<&str> = m1_kernel_stacks(&folded).map(|(stack, _)| stack).collect();
    assert!(stacks.len() > 3, "few kernel samples:\n{folded}");
    assert!(
        stacks.iter().any(|s| s.split(';').count() > 2),
        "no kernel stack deeper than two frames:\n{folded}"
    );
    let functions: Vec<&str> = stacks.iter().flat_map(|s| s.split(';')).collect();
    for f in &functions {
        assert!(
            symbols.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{f} is not a guest kernel function"
        );
    }
    // User samples are named by the process that ran: `ls` did most of the user work.
    let processes: Vec<&str> = folded
        .lines()
        .filter_map(|l| l.strip_prefix("m1;user;"))
        .filter_map(|l| l.split_once(' ').map(|(comm, _)| comm))
        .collect();
    assert!(processes.contains(&"ls"), "no samples of ls:\n{folded}");
    assert!(
        !processes.contains(&"?"),
        "a user sample without its process:\n{folded}"
    );
    // The flame graph leaves out frames too narrow to draw, so look for the widest: the
    // outermost kernel function with the most samples under it.
    let mut outermost = std::collections::BTreeMap::<&str, u64>::new();
    for (stack, n) in m1_kernel_stacks(&folded) {
        let first = stack.split(';').next().unwrap_or(stack);
        *outermost.entry(first).or_default() += n;
    }
    let (widest, _) = outermost
        .iter()
        .max_by_key(|(_, n)| **n)
        .expect("a kernel stack");
    let svg = std::fs::read_to_string(out.join("run.svg")).expect("run.svg");
    assert!(
        svg.starts_with("<?xml") && svg.contains(widest),
        "the flame graph lacks {widest}, the widest kernel frame:\n{folded}"
    );
    assert!(out.join("m2.svg").is_file() && out.join("m2.folded").is_file());

    // The summary's exits, less the signals, page clears, page copies, byte copies and record
    // fills, are the exits the trace recorded for each machine.
    let summary = std::fs::read_to_string(out.join("profile.txt")).expect("profile.txt");
    let trace = std::fs::read_to_string(&trace).expect("the trace");
    // Every sample, kernel ones too, counts for the task the guest ran: `ls`'s directory walks
    // are most of m1's samples.
    let m1 = summary
        .split_once("\nm1: ")
        .and_then(|(_, rest)| rest.split_once("\nm2: "))
        .map(|(m1, _)| m1)
        .unwrap_or_else(|| panic!("no m1 before m2 in the summary:\n{summary}"));
    let processes: Vec<&str> = m1
        .split_once("  by process")
        .unwrap_or_else(|| panic!("no samples by process:\n{summary}"))
        .1
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once("%  ").map(|(_, comm)| comm))
        .collect();
    assert_eq!(processes.first(), Some(&"ls"), "{summary}");
    assert!(
        !processes.contains(&"?"),
        "a sample without its task:\n{summary}"
    );
    for m in ["m1", "m2"] {
        let number_before = |word: &str| summary_count(&summary, m, word);
        let (exits, signals) = (number_before(" exits"), number_before(" of them signals"));
        let page_clears = number_before(" page clears");
        let page_copies = number_before(" page copies");
        let byte_copies = number_before(" byte copies");
        // The memory map's record fills come at boot, before the template these machines
        // start from: none here.
        let record_fills = number_before(" record fills");
        assert_eq!(record_fills, 0, "{m}:\n{summary}");
        let traced = trace
            .lines()
            .filter(|l| l.contains(&format!("\"machine\":\"{m}\"")))
            .filter(|l| {
                [
                    "pio_in",
                    "pio_out",
                    "mmio_read",
                    "mmio_write",
                    "msr_read",
                    "msr_write",
                    "halt",
                ]
                .iter()
                .any(|e| l.contains(&format!("\"event\":\"{e}\"")))
            })
            .count() as u64;
        assert!(signals > 0, "no samples interrupted {m}:\n{summary}");
        // The guest kernel's zeroed pages (157 for m1 of this seed) and its copy-on-write
        // copies after each fork: none unless it asks.
        assert!(page_clears > 100, "{m} had few pages cleared:\n{summary}");
        assert!(page_copies > 10, "{m} had few pages copied:\n{summary}");
        // And copies between kernel buffers: the headers an exec reads (`ping`'s; busybox runs
        // `ls` in the forked shell without one), 4 for this seed.
        assert!(byte_copies >= 2, "{m} had few bytes copied:\n{summary}");
        assert_eq!(
            exits - signals - page_clears - page_copies - byte_copies - record_fills,
            traced,
            "{m}:\n{summary}"
        );
        // And its interrupts are the ones the trace recorded.
        let injected: u64 = summary
            .lines()
            .skip_while(|l| !l.starts_with(&format!("{m}: ")))
            .find(|l| l.contains("interrupts injected"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no interrupt count for {m}:\n{summary}"));
        let traced_interrupts = trace
            .lines()
            .filter(|l| l.contains(&format!("\"machine\":\"{m}\"")))
            .filter(|l| l.contains("\"event\":\"interrupt\""))
            .count() as u64;
        assert!(injected > 0);
        assert_eq!(injected, traced_interrupts, "{m}:\n{summary}");
        // The guest kernel's own counts: three `ls -R /bin` (an lstat per entry, hundreds of
        // entries) and the processes' page faults; zero if the clock page's counts are not read.
        let counts = summary
            .lines()
            .skip_while(|l| !l.starts_with(&format!("{m}: ")))
            .find(|l| l.contains(" system calls ("))
            .unwrap_or_else(|| panic!("no system call count for {m}:\n{summary}"));
        let words: Vec<&str> = counts.split_whitespace().collect();
        let syscalls: u64 = words[0].parse().expect("a system call count");
        let faults_at = words
            .iter()
            .position(|w| *w == "page")
            .expect("page faults")
            - 1;
        let page_faults: u64 = words[faults_at].parse().expect("a page fault count");
        assert!(syscalls > 1000, "{m}: {counts}");
        assert!(page_faults > 100, "{m}: {counts}");
        let activities = summary
            .lines()
            .skip_while(|l| !l.starts_with(&format!("{m}: ")))
            .skip_while(|l| !l.contains("by activity"))
            .take_while(|l| !l.contains("by function"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            activities.contains("%  system call ") && activities.contains("%  page fault"),
            "{m}:\n{summary}"
        );
    }
    // What parallel stepping could make of the run: on two threads at most twice as fast as on
    // one and never slower, and a thread per machine (two here) at least as fast.
    let parallel = summary
        .lines()
        .find(|l| l.starts_with("parallel stepping"))
        .unwrap_or_else(|| panic!("no parallel stepping estimate:\n{summary}"));
    let seconds_before = |suffix: &str| -> f64 {
        let before = parallel
            .split(suffix)
            .next()
            .filter(|b| b.len() < parallel.len())
            .unwrap_or_else(|| panic!("no \"{suffix}\" in: {parallel}"));
        let number = before.split_whitespace().last().unwrap_or_default();
        number
            .parse()
            .unwrap_or_else(|_| panic!("{number:?} before \"{suffix}\" in: {parallel}"))
    };
    let one = seconds_before(" s; with the switch's minimum latency");
    let two = seconds_before(" s on 2 threads");
    let per_machine = seconds_before(" s with a thread per machine");
    let wall: f64 = profiled
        .field("wall")
        .trim_end_matches('s')
        .parse()
        .expect("the run's wall time");
    assert!(one > 0.0 && one <= wall, "{parallel} (run: {wall} s)");
    assert!(two <= one && two >= one / 2.0 - 0.01, "{parallel}");
    assert!(per_machine <= two, "{parallel}");
}

/// Samples in `sync_regs` in a profile's `m1.instructions` (`ADDRESS function+OFFSET COUNT`).
fn sync_regs_samples(dir: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("m1.instructions")).expect("m1.instructions");
    text.lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let at = fields.nth(1)?;
            let count = fields.next()?.parse::<u64>().ok()?;
            at.starts_with("sync_regs+").then_some(count)
        })
        .sum()
}

#[test]
fn entering_on_the_task_stack_leaves_sync_regs_nothing_to_copy() {
    if !kvm_or_skip("entering_on_the_task_stack_leaves_sync_regs_nothing_to_copy") {
        return;
    }
    let dir = temp_dir("task-stack");
    let outs = [dir.join("on"), dir.join("off")];
    let runs = side_by_side(2, |i| {
        let out = outs[i].to_string_lossy().into_owned();
        let mut args = vec!["--profile", &out, "--profile-rate", "1000"];
        if i == 1 {
            args.push("--no-task-stack-entry");
        }
        run_guest(&args, &["simvm-clock", "calls", "20000"])
    });
    for run in &runs {
        assert_eq!(run.code, Some(0), "{}", run.all());
    }
    assert_eq!(runs[0].console("m1"), runs[1].console("m1"));
    // The two profiles side by side: m1's time inside KVM_RUN as each profile.json has it, and
    // the activity the program spends it in.
    let compared = simvm(
        &[
            "profile",
            "compare",
            &outs[1].to_string_lossy(),
            &outs[0].to_string_lossy(),
        ],
        &[],
    );
    assert_eq!(compared.code, Some(0), "{}", compared.all());
    let kvm_run = |out: &std::path::Path| {
        let figures = figures::load(out).unwrap_or_else(|e| panic!("{e}"));
        let m1 = figures
            .machines
            .iter()
            .find(|m| m.name == "m1")
            .expect("m1");
        assert!(m1.samples > 0 && m1.activities.contains_key("system call getppid"));
        format!("{:.2}s", m1.kvm_run_s)
    };
    let row = compared
        .stdout
        .lines()
        .find(|l| l.starts_with("m1 inside KVM_RUN"))
        .unwrap_or_else(|| panic!("no m1 row:\n{}", compared.stdout));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        fields[3..5],
        [kvm_run(&outs[1]), kvm_run(&outs[0])],
        "{}",
        compared.stdout
    );
    assert!(
        compared.stdout.contains("  system call getppid"),
        "{}",
        compared.stdout
    );
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        // With VMX/SVM, system calls enter through SYSCALL (no sync_regs()) and a copy costs
        // nanoseconds: the samples below say nothing there.
        eprintln!("not a PVM host: checked that both entry stacks run, not their samples");
        return;
    }
    // Under PVM every system call enters from user mode as a page fault. On the entry stack,
    // sync_regs() copies the registers with a 21-iteration `rep movsq`, emulated an iteration at
    // a time (a few per cent of the samples); on the task stack it only compares two pointers.
    // Wall-clock samples of an emulated guest are noisy: one run found only 3.8x fewer (74
    // against 280), so the bound is 2x, still far from the 1x of a switch that does nothing.
    let (on, off) = (sync_regs_samples(&outs[0]), sync_regs_samples(&outs[1]));
    eprintln!("samples in sync_regs: {on} on the task stack, {off} on the entry stack");
    assert!(
        off >= 40,
        "only {off} samples in sync_regs on the entry stack"
    );
    assert!(
        on * 2 < off,
        "{on} samples in sync_regs on the task stack, {off} on the entry stack"
    );
}

/// The number before `word` on machine `m`'s first line of a profile summary.
fn summary_count(summary: &str, m: &str, word: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.starts_with(&format!("{m}: ")))
        .unwrap_or_else(|| panic!("no {m} in the summary:\n{summary}"));
    let at = line
        .find(word)
        .unwrap_or_else(|| panic!("no {word:?} in: {line}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no count before {word:?} in: {line}"))
}

/// Machine `m1`'s kernel stacks in a profile's folded stacks (callers first, `;`-separated),
/// each with its sample count.
fn m1_kernel_stacks(folded: &str) -> impl Iterator<Item = (&str, u64)> {
    folded
        .lines()
        .filter_map(|l| l.strip_prefix("m1;kernel;"))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(stack, n)| (stack, n.parse().expect("a sample count")))
}

/// The share of machine `m1`'s kernel samples in a profile's folded stacks that have `frame`
/// somewhere in their stack, in per cent.
fn kernel_share(folded: &str, frame: &str) -> f64 {
    let (mut with, mut all) = (0u64, 0u64);
    for (stack, n) in m1_kernel_stacks(folded) {
        all += n;
        if stack.split(';').any(|f| f == frame) {
            with += n;
        }
    }
    assert!(all > 100, "few kernel samples:\n{folded}");
    100.0 * with as f64 / all as f64
}

/// A cold boot of the etcd image (43 MB of initramfs, 384 MiB) spends its time on the kernel's
/// own start, not on the image: simvm copies the archive's files into the page cache (patch
/// 0030), the initrd goes back to the allocator in blocks (0031) and the MP table scan maps
/// each area once (0032); the alternatives are patched without decoding most sites (0033),
/// the direct map is set up with one E820 pass per entry (0034), simvm writes most of the
/// memory map (0036) and the slab caches get no sysfs files (0037). The boot is the same run
/// as one whose guest copies for itself.
#[test]
fn a_cold_boot_has_simvm_copy_its_initramfs_and_runs_the_same() {
    if !kvm_or_skip("a_cold_boot_has_simvm_copy_its_initramfs_and_runs_the_same") {
        return;
    }
    let etcd = image(Some("etcd"));
    let out = temp_dir("cold-copies").join("profile");
    let out_s = out.to_string_lossy().into_owned();
    let runs = side_by_side(2, |i| {
        let mut args = vec!["run", "--mem", "384M", "--cold", "--page-work"];
        if i == 0 {
            args.extend(["host", "--profile", &out_s]);
        } else {
            args.push("guest");
        }
        args.extend(["--", "md5sum", "/usr/bin/etcd"]);
        simvm_on(&etcd, &args)
    });
    for run in &runs {
        assert_eq!(run.code, Some(0), "{}", run.all());
    }
    assert_eq!(
        runs[0].field("digest"),
        runs[1].field("digest"),
        "simvm's copies changed the boot"
    );
    // The unpacked etcd is the same byte for byte, whoever copied it.
    assert_eq!(runs[0].console("m1"), runs[1].console("m1"));
    let summary = std::fs::read_to_string(out.join("profile.txt")).expect("profile.txt");
    // A copy for each of the tmpfs folios that hold the image's files (82): the guest copies
    // none by itself.
    let copies = summary_count(&summary, "m1", " byte copies");
    assert!(copies >= 50, "few bytes copied at boot:\n{summary}");
    // A record fill for each page of the memory map but the few the loop fills itself: 96 671
    // struct pages of 384 MiB in fills of 63.
    let fills = summary_count(&summary, "m1", " record fills");
    assert!(fills > 1000, "few record fills at boot:\n{summary}");
    // Each function below took a large share of the samples before its patch: the unpacking's
    // copies 38% (0030), the initrd's freeing 17% (0031), the MP table scan 11.6% (0032), each
    // about 1% after; decoding the alternative sites' instructions 7.9% (0033; 1.5% after, the
    // sites with NOPs to rewrite and the relocations); the direct map's E820 passes 3.4% (0034,
    // which calls `e820__mapped_any()` no more there); the memory map's initialisation 14.4%
    // (0036); sysfs attribute groups 12.3%, most of them the slab caches' (0037; 4% after).
    let folded = std::fs::read_to_string(out.join("m1.folded")).expect("m1.folded");
    for (frame, limit) in [
        ("memcpy_orig", 5.0),
        ("free_initrd_mem", 5.0),
        ("mpparse_find_mptable", 5.0),
        ("insn_decode", 4.0),
        ("e820__mapped_any", 1.0),
        ("memmap_init_range", 5.0),
        ("internal_create_group", 7.0),
    ] {
        let share = kernel_share(&folded, frame);
        assert!(
            share < limit,
            "{frame} took {share:.1}% of the boot:\n{summary}"
        );
    }
}

#[test]
fn profile_compare_says_which_profile_it_cannot_read() {
    // Needs no KVM: the command only reads files.
    let dir = temp_dir("profile-compare");
    let missing = dir.join("no-profile");
    let path = missing.to_string_lossy().into_owned();
    let compare = || simvm(&["profile", "compare", &path, &path], &[]);
    let run = compare();
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(
        run.stderr.contains("cannot read the profile") && run.stderr.contains("no-profile"),
        "{}",
        run.all()
    );
    std::fs::create_dir_all(&missing).unwrap();
    std::fs::write(missing.join("profile.json"), "not json").unwrap();
    let run = compare();
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(run.stderr.contains("not a simvm profile"), "{}", run.all());
}

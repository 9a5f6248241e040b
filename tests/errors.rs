//! Bad input gets a clear error, never a panic: a missing KVM device, a missing, misplaced or
//! broken image, a broken scenario, too little memory, a guest that triple-faults or whose
//! kernel panics, a guest blocked for good, a guest that hands its NIC a broken receive chain.

use std::time::Duration;

use simvm_tests::{image, kvm_or_skip, parse_vtime, run_guest, simvm, temp_dir};

fn assert_clean_error(run: &simvm_tests::Run, expected: &[&str]) {
    assert_eq!(
        run.code,
        Some(2),
        "expected a usage/environment error:\n{}",
        run.all()
    );
    for text in expected {
        assert!(
            run.stderr.contains(text),
            "stderr lacks {text:?}:\n{}",
            run.all()
        );
    }
    assert!(
        !run.stderr.contains("panicked"),
        "simvm panicked:\n{}",
        run.all()
    );
}

#[test]
fn missing_kvm_device_says_how_to_fix_it() {
    let dir = temp_dir("nokvm");
    let kernel = dir.join("vmlinux");
    let initramfs = dir.join("initramfs.cpio");
    std::fs::write(&kernel, b"x").unwrap();
    std::fs::write(&initramfs, b"x").unwrap();
    let run = simvm(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initramfs",
            initramfs.to_str().unwrap(),
        ],
        &[("SIMVM_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert_clean_error(&run, &["cannot open /nonexistent/kvm", "usermod -aG kvm"]);
}

#[test]
fn missing_image_names_the_build_command() {
    let run = simvm(
        &[
            "run",
            "--kernel",
            "/nonexistent/vmlinux",
            "--initramfs",
            "/nonexistent/initramfs",
        ],
        &[],
    );
    assert_clean_error(
        &run,
        &["/nonexistent/vmlinux not found", "simvm image build"],
    );
}

/// A kernel or initramfs that exists but is no file is named for what it is, not "not found".
#[test]
fn a_directory_or_a_device_as_the_image_is_named_as_such() {
    let dir = temp_dir("notfile");
    let file = dir.join("initramfs.cpio");
    std::fs::write(&file, b"070701").unwrap();
    let (dir_s, file_s) = (dir.to_str().unwrap(), file.to_str().unwrap());
    let cases: [(&[&str], String); 4] = [
        (
            &["--kernel", dir_s, "--initramfs", file_s],
            format!("guest kernel {dir_s} is a directory: pass the kernel file"),
        ),
        (
            &["--kernel", "/dev/zero", "--initramfs", file_s],
            "guest kernel /dev/zero is not a regular file (it is a character device)".into(),
        ),
        (
            &["--kernel", file_s, "--initramfs", dir_s],
            format!("guest initramfs {dir_s} is a directory: pass the initramfs file"),
        ),
        (
            &["--kernel", file_s, "--initramfs", "/dev/null"],
            "guest initramfs /dev/null is not a regular file (it is a character device)".into(),
        ),
    ];
    for (args, expected) in cases {
        let run = simvm(&[&["run"], args, &["--", "true"]].concat(), &[]);
        assert_clean_error(&run, &[&expected]);
        assert!(!run.stderr.contains("not found"), "{}", run.all());
    }
}

/// Every scenario error names the file, line and column: syntax errors, a file that is not
/// UTF-8, a run that nothing ends.
#[test]
fn scenario_errors_name_the_file_line_and_column() {
    let dir = temp_dir("scenario-errors");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let syntax = write("syntax.toml", b"[[machine]]\ncommand = \"x\"\nfoo = [\n");
    let latin1 = write("latin1.toml", b"[[machine]]\ncommand = \"caf\xe9\"\n");
    let servers = write(
        "servers.toml",
        b"[[machine]]\ncommand = \"x\"\nexpect = \"running\"\n",
    );
    for (path, expected) in [
        (
            &syntax,
            format!("simvm: error: {syntax}:4:1: invalid array: expected `]`"),
        ),
        (
            &latin1,
            format!("simvm: error: {latin1}:2:15: this is not UTF-8 text"),
        ),
        (
            &servers,
            format!("simvm: error: {servers}:3:10: nothing ends this run"),
        ),
    ] {
        let run = simvm(&["run", path], &[]);
        assert_clean_error(&run, &[&expected]);
    }
    // The command line's --until ends the run the file leaves open: the scenario is accepted,
    // and what stops this run is the missing kernel.
    let run = simvm(
        &[
            "run",
            &servers,
            "--until",
            "1s",
            "--kernel",
            "/nonexistent/vmlinux",
            "--initramfs",
            "/nonexistent/initramfs",
        ],
        &[],
    );
    assert_clean_error(&run, &["/nonexistent/vmlinux not found"]);
}

#[test]
fn bad_kernel_memory_and_guest_faults_are_reported() {
    if !kvm_or_skip("bad_kernel_memory_and_guest_faults_are_reported") {
        return;
    }
    let dir = temp_dir("badkernel");
    let initramfs = dir.join("initramfs.cpio");
    std::fs::write(&initramfs, b"070701").unwrap();
    let run_kernel = |kernel: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initramfs",
            initramfs.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        simvm(&args, &[])
    };

    // Not an ELF file.
    let text = dir.join("not-elf");
    std::fs::write(&text, b"this is not a kernel\n").unwrap();
    assert_clean_error(
        &run_kernel(&text, &[]),
        &["cannot load the guest kernel", "ELF vmlinux"],
    );

    // Too little and too much memory.
    let ud2 = dir.join("ud2.elf");
    std::fs::write(
        &ud2,
        simvm_vmm::test_elf::kernel(simvm_vmm::test_elf::TRIPLE_FAULT),
    )
    .unwrap();
    assert_clean_error(
        &run_kernel(&ud2, &["--mem", "8M"]),
        &["guest memory of 8M is too small"],
    );
    assert_clean_error(
        &run_kernel(&ud2, &["--mem", "512K"]),
        &["guest memory of 512K is too small"],
    );
    assert_clean_error(&run_kernel(&ud2, &["--mem", "64G"]), &["too large"]);

    // A guest that faults with no IDT: a triple fault (VMX/SVM) or, where KVM emulates ring 0
    // (PVM), possibly an emulation failure. Either way: machine, step, registers, code bytes.
    let run = run_kernel(&ud2, &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stderr.contains("machine m1 died at step"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("triple fault") || run.stderr.contains("could not emulate"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("rip 0000000001000000"), "{}", run.all());
    assert!(run.stderr.contains("code at rip: 0f 0b"), "{}", run.all());
    assert!(
        run.field("result") == "FAIL" && run.summary().contains("m1=crashed("),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("reproduce: simvm run --seed 1"),
        "{}",
        run.all()
    );

    // A guest that halts with interrupts disabled can never continue.
    let halt = dir.join("halt.elf");
    std::fs::write(
        &halt,
        simvm_vmm::test_elf::kernel(simvm_vmm::test_elf::HALT_FOREVER),
    )
    .unwrap();
    let run = run_kernel(&halt, &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.summary().contains("m1=halted"), "{}", run.all());
}

#[test]
fn guest_kernel_panic_is_reported_with_the_console() {
    if !kvm_or_skip("guest_kernel_panic_is_reported_with_the_console") {
        return;
    }
    // An init that exits at once makes the kernel panic ("Attempted to kill init").
    let _ = image(None);
    let run = run_guest(&["--kernel-args", "rdinit=/bin/false"], &["true"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("guest kernel panic"), "{}", run.all());
    assert!(
        run.stderr.contains("Kernel panic - not syncing"),
        "{}",
        run.all()
    );
    assert!(
        run.summary().contains("m1=crashed(guest kernel panic)"),
        "{}",
        run.all()
    );
}

/// A command blocked for good (reading a FIFO nobody writes) leaves its machine nothing that
/// could ever wake it (patch 0029: no timekeeping or writeback timer either), so the run ends
/// there as idle or deadlocked, long before its end time, and fails; the report says since
/// when the machine made no system call: from the start, not at the end.
#[test]
fn a_machine_blocked_for_good_ends_the_run_as_idle_with_its_last_system_call() {
    if !kvm_or_skip("a_machine_blocked_for_good_ends_the_run_as_idle_with_its_last_system_call") {
        return;
    }
    let run = run_guest(
        &["--until", "1h"],
        &["sh", "-c", "mkfifo /tmp/f; echo waiting; cat /tmp/f"],
    );
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.summary().contains("m1=running"), "{}", run.all());
    assert!(
        run.stderr.contains(
            "simvm: every running machine is halted with nothing pending (at virtual time "
        ),
        "{}",
        run.all()
    );
    // The deferred housekeeping of the first seconds after boot runs, then nothing: a kernel
    // that still wakes now and then runs to the hour's end.
    let ended = parse_vtime(&run.field("vtime")).expect("the summary's vtime");
    assert!(
        ended < Duration::from_secs(60),
        "the run went on to {ended:?}"
    );
    let notice = run
        .stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "simvm: m1 was still running at the end and had made no system call since ",
            )
        })
        .unwrap_or_else(|| panic!("no notice:\n{}", run.all()));
    // Blocked 8 ms into the run (the shell's last calls).
    assert!(notice.starts_with("00:00:00.0"), "{notice}");
    assert!(notice.contains("): blocked"), "{notice}");
}

/// The guest address of virtio-mmio register `offset` (`virtio_bindings::virtio_mmio`) in the
/// first window.
fn mmio(offset: u32) -> u64 {
    simvm_devices::abi::VIRTIO_MMIO_BASE + u64::from(offset)
}

/// A test guest that brings up its virtio-net (VERSION_1 only) with both queues of 8 entries;
/// queue `queue` has one descriptor, `desc` (address 0: `buffer`'s), made available, and
/// `notify` kicks it. The rings and `buffer` are laid out in the guest's data page.
fn virtio_net_guest(queue: u32, desc: (u64, u32, u16), buffer: &[u8], notify: bool) -> Vec<u8> {
    use simvm_vmm::test_elf::{kernel, mmio_writer, DATA_OFFSET, LOAD_ADDR};
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_FEATURES_OK,
    };
    use virtio_bindings::virtio_mmio::*;
    // Queue q's rings at q * RINGS: descriptors, then avail at +0x100, used at +0x200.
    const RINGS: usize = 0x400;
    const BUFFER: usize = 0x800;
    let data_gpa = LOAD_ADDR + DATA_OFFSET;
    let mut data = vec![0u8; BUFFER + buffer.len()];
    let (addr, len, flags) = desc;
    let addr = if addr == 0 {
        data_gpa + BUFFER as u64
    } else {
        addr
    };
    let at = queue as usize * RINGS;
    data[at..at + 8].copy_from_slice(&addr.to_le_bytes());
    data[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
    data[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
    // avail: flags 0, idx 1, ring[0] = descriptor 0.
    data[at + 0x102..at + 0x104].copy_from_slice(&1u16.to_le_bytes());
    data[BUFFER..].copy_from_slice(buffer);
    let gpa = |off: usize| data_gpa + off as u64;
    let (ack, driver) = (VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER);
    let features_ok = ack | driver | VIRTIO_CONFIG_S_FEATURES_OK;
    let mut writes = vec![
        (mmio(VIRTIO_MMIO_STATUS), 0),
        (mmio(VIRTIO_MMIO_STATUS), ack),
        (mmio(VIRTIO_MMIO_STATUS), ack | driver),
        (mmio(VIRTIO_MMIO_DRIVER_FEATURES_SEL), 1),
        (mmio(VIRTIO_MMIO_DRIVER_FEATURES), 1), // VIRTIO_F_VERSION_1 (bit 32)
        (mmio(VIRTIO_MMIO_STATUS), features_ok),
    ];
    for q in 0..2u32 {
        let base = q as usize * RINGS;
        writes.push((mmio(VIRTIO_MMIO_QUEUE_SEL), q));
        writes.push((mmio(VIRTIO_MMIO_QUEUE_NUM), 8));
        for (low, high, addr) in [
            (
                VIRTIO_MMIO_QUEUE_DESC_LOW,
                VIRTIO_MMIO_QUEUE_DESC_HIGH,
                gpa(base),
            ),
            (
                VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                gpa(base + 0x100),
            ),
            (
                VIRTIO_MMIO_QUEUE_USED_LOW,
                VIRTIO_MMIO_QUEUE_USED_HIGH,
                gpa(base + 0x200),
            ),
        ] {
            writes.push((mmio(low), addr as u32));
            writes.push((mmio(high), (addr >> 32) as u32));
        }
        writes.push((mmio(VIRTIO_MMIO_QUEUE_READY), 1));
    }
    writes.push((
        mmio(VIRTIO_MMIO_STATUS),
        features_ok | VIRTIO_CONFIG_S_DRIVER_OK,
    ));
    if notify {
        writes.push((mmio(VIRTIO_MMIO_QUEUE_NOTIFY), queue));
    }
    kernel(&mmio_writer(&writes, &data).expect("the writes fit in a page"))
}

/// A receive chain the guest broke is reported at the step that delivers a frame into it,
/// even when the guest never touches its device again (it used to wait for the guest's next
/// MMIO write, here: forever).
#[test]
fn receive_chain_errors_are_reported_at_delivery() {
    use simvm_devices::net::switch::LinkConfig;
    use simvm_vmm::machine::MachineConfig;
    use simvm_vmm::network::NetworkConfig;
    use simvm_vmm::seed::Seed;
    use simvm_vmm::world::{World, WorldConfig};

    if !kvm_or_skip("receive_chain_errors_are_reported_at_delivery") {
        return;
    }
    let dir = temp_dir("rx-chain");
    // m1 offers one receive buffer at an address far outside its 64 MiB of RAM.
    let receiver = virtio_net_guest(0, (0x7f_0000_0000, 1526, 2 /* WRITE */), &[], false);
    // m2 sends one broadcast frame: a zero virtio-net header (12 bytes), then Ethernet.
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 2]);
    frame.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    frame.resize(12 + 60, 0x5a);
    let sender = virtio_net_guest(1, (0, frame.len() as u32, 0), &frame, true);
    let machines = [("m1", receiver), ("m2", sender)]
        .into_iter()
        .enumerate()
        .map(|(i, (name, elf))| {
            let path = dir.join(format!("{name}.elf"));
            std::fs::write(&path, elf).expect("write the test kernel");
            MachineConfig {
                index: i,
                mac: Some(simvm_devices::net::MachineId(i as u16).mac()),
                ..MachineConfig::new(name, path, vec![vec![0u8; 4096].into()], 64 << 20)
            }
        })
        .collect();
    let trace = dir.join("trace.jsonl");
    let config = WorldConfig {
        network: Some(NetworkConfig {
            defaults: LinkConfig::default(),
            links: Vec::new(),
            timeline: Vec::new(),
        }),
        until_ns: Some(10_000_000),
        trace_json: Some(trace.clone()),
        ..WorldConfig::new(Seed(1), machines)
    };
    let mut lines = Vec::new();
    let outcome = World::new(config)
        .expect("build the world")
        .run(&mut |line| lines.push(line.to_string()))
        .expect("run the world");
    assert_eq!(outcome.machines[0].device_errors, 1, "{lines:#?}");
    assert_eq!(outcome.machines[1].device_errors, 0, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("simvm: m1: net: virtio-net rx chain at descriptor 0")),
        "{lines:#?}"
    );
    // The error is traced at the very step that delivered the frame.
    let events: Vec<String> = std::fs::read_to_string(&trace)
        .expect("read the trace")
        .lines()
        .filter(|l| l.contains("\"machine\":\"m1\""))
        .map(str::to_string)
        .collect();
    let step_of = |kind: &str| -> u64 {
        let line = events
            .iter()
            .find(|l| l.contains(&format!("\"event\":\"{kind}\"")))
            .unwrap_or_else(|| panic!("no {kind} event for m1 in the trace"));
        let rest = &line[line.find("\"step\":").expect("a step") + 7..];
        rest[..rest.find(',').expect("a field after the step")]
            .parse()
            .expect("a step number")
    };
    assert_eq!(step_of("device_error"), step_of("frame_delivered"));
}

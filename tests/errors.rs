//! Bad input gets a clear error, never a panic: a missing KVM device, a missing, misplaced or
//! broken image, a broken scenario, too little memory, a guest that triple-faults or whose
//! kernel panics.

use simvm_tests::{image, kvm_or_skip, run_guest, simvm, temp_dir};

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
    let _ = std::fs::remove_dir_all(dir);
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
    let _ = std::fs::remove_dir_all(dir);
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
        &["guest memory of 8 MiB is too small"],
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

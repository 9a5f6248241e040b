//! The huge page cache (docs/performance.md "Guest tunings"): tmpfs files, the root
//! filesystem's among them, sit in 2 MiB huge pages wherever a whole one fits within the file,
//! and `--no-huge-page-cache` keeps them in 4 KiB pages.

use simvm_tests::{kvm_or_skip, run_guest, side_by_side, Run};

/// The root filesystem's mount options, then how many huge pages a 6 MiB file written into it
/// adds to the page cache. The file's size is set first, as the initramfs unpacker does, so
/// every 2 MiB of it lies within the file when it is written.
const PROBE: &str = "huge() { awk '$1 == \"nr_shmem_hugepages\" { print $2 }' /proc/vmstat; }; \
                     before=$(huge); truncate -s 6M /big; \
                     dd if=/dev/zero of=/big bs=1M count=6 conv=notrunc 2>/dev/null; \
                     echo \"rootfs $(awk '$2 == \"/\" { print $4 }' /proc/mounts)\"; \
                     echo \"huge pages $(( $(huge) - before ))\"";

/// The rest of the first line m1 printed that starts with `prefix`.
fn line(run: &Run, prefix: &str) -> String {
    run.console("m1")
        .iter()
        .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
        .unwrap_or_else(|| panic!("m1 never printed {prefix:?}:\n{}", run.all()))
}

#[test]
fn tmpfs_files_sit_in_huge_pages_only_with_the_huge_page_cache() {
    if !kvm_or_skip("tmpfs_files_sit_in_huge_pages_only_with_the_huge_page_cache") {
        return;
    }
    let runs = side_by_side(2, |i| {
        let args: &[&str] = if i == 0 {
            &[]
        } else {
            &["--no-huge-page-cache"]
        };
        run_guest(args, &["sh", "-c", PROBE])
    });
    for run in &runs {
        assert_eq!(run.code, Some(0), "{}", run.all());
    }
    let (on, off) = (&runs[0], &runs[1]);
    assert!(
        line(on, "rootfs ").contains("huge=within_size"),
        "{}",
        on.all()
    );
    assert_eq!(line(on, "huge pages "), "3", "{}", on.all());
    assert!(!line(off, "rootfs ").contains("huge="), "{}", off.all());
    assert_eq!(line(off, "huge pages "), "0", "{}", off.all());
}

//! The etcd recipe: real Debian binaries (etcd-server, etcd-client) run in the guest.

use simvm_tests::{image, kvm_or_skip, simvm};

#[test]
fn etcd_and_etcdctl_run_in_the_etcd_image() {
    if !kvm_or_skip("etcd_and_etcdctl_run_in_the_etcd_image") {
        return;
    }
    let image = image(Some("etcd"));
    let run = simvm(
        &[
            "run",
            "--seed",
            "1",
            "--mem",
            "256M",
            "--kernel",
            image.kernel.to_str().unwrap(),
            "--initramfs",
            image.initramfs.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "etcd --version && etcdctl version",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.all());
    let console = run.console("m1").join("\n");
    assert!(console.contains("etcd Version: 3.4"), "{}", run.all());
    assert!(console.contains("etcdctl version: 3.4"), "{}", run.all());
}

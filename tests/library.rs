//! simvm as a library, the way a Rust project drives it from its own `cargo test`: build a
//! scenario in code, run it from a seed, look at the outcome. The guest reboots itself once, so
//! this also checks that a reboot starts a new incarnation on the same disk, which keeps what
//! the first incarnation synced.

use simvm_tests::{image, kvm_or_skip};
use simvm_vmm::image::GuestImage;
use simvm_vmm::scenario::{assign_mounts, DiskSpec, Scenario};
use simvm_vmm::simulation::Simulation;

const SCRIPT: &str = "if [ \"$SIMVM_INCARNATION\" = 1 ]; then \
       echo kept-across-reboot > /data/note; sync; echo rebooting; reboot -f; \
     else echo incarnation $SIMVM_INCARNATION reads $(cat /data/note); fi";

#[test]
fn a_rust_test_runs_a_simulation_and_a_reboot_keeps_the_disk() {
    if !kvm_or_skip("a_rust_test_runs_a_simulation_and_a_reboot_keeps_the_disk") {
        return;
    }
    let mut scenario = Scenario::from_cli(1, vec!["sh".into(), "-c".into(), SCRIPT.into()]);
    scenario.machines[0]
        .disks
        .push(DiskSpec::ext4(16 << 20, None));
    assign_mounts(&mut scenario.machines[0].disks);
    let built = image(None);
    let simulation = Simulation::new(scenario, 11).with_image(GuestImage {
        kernel: built.kernel,
        initramfs: built.initramfs,
    });
    let mut lines = Vec::new();
    let outcome = simulation
        .run(&mut |line| lines.push(line.to_string()))
        .expect("the simulation runs");
    let console = lines.join("\n");
    assert!(simulation.passed(&outcome), "{console}\n{outcome:?}");
    let m1 = &outcome.machines[0];
    assert_eq!(m1.incarnations, 2, "{console}");
    assert_eq!(m1.exit_status, Some(0), "{console}");
    assert!(
        lines.iter().any(
            |l| l.contains(" m1#2 ") && l.ends_with("> incarnation 2 reads kept-across-reboot")
        ),
        "the second incarnation did not read the note:\n{console}"
    );
    // A reboot is no power loss: nothing was crashed.
    assert!(m1.disk_crashes.is_empty(), "{:?}", m1.disk_crashes);
}

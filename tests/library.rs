//! simvm as a library, the way a Rust project drives it from its own `cargo test`: build a
//! scenario in code, run it from a seed, look at the outcome. The guest reboots itself once, so
//! this also checks that a reboot starts a new incarnation on the same disk, which keeps what
//! the first incarnation synced, and that a bad sector scheduled in the timeline fails the
//! guest's read of it.

use simvm_devices::disk::Fault;
use simvm_tests::{image, kvm_or_skip};
use simvm_vmm::image::GuestImage;
use simvm_vmm::scenario::{assign_mounts, Action, DiskContents, DiskSpec, Event, Scenario};
use simvm_vmm::simulation::Simulation;

const SCRIPT: &str = "if [ \"$SIMVM_INCARNATION\" = 1 ]; then \
       dd if=/dev/vdb bs=4096 count=1 of=/dev/null 2>/dev/null && echo vdb block 0 reads; \
       dd if=/dev/vdb bs=4096 skip=1 count=1 of=/dev/null 2>/dev/null || echo vdb block 1 fails; \
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
    // A raw second disk whose sectors 8..16 (the second 4 KiB block) went bad before boot.
    scenario.machines[0].disks.push(DiskSpec {
        contents: DiskContents::Raw,
        ..DiskSpec::ext4(1 << 20, None)
    });
    assign_mounts(&mut scenario.machines[0].disks);
    scenario.timeline.push(Event {
        at_ns: 0,
        action: Action::DiskFault {
            machine: 0,
            disk: 1,
            fault: Fault::LatentErrors { start: 8, count: 8 },
        },
    });
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
    for expected in ["> vdb block 0 reads", "> vdb block 1 fails"] {
        assert!(
            lines.iter().any(|l| l.ends_with(expected)),
            "no `{expected}`:\n{console}"
        );
    }
    // A reboot is no power loss: nothing was crashed.
    assert!(m1.disk_crashes.is_empty(), "{:?}", m1.disk_crashes);
}

/// World actions are events of their own: a kill and a restart scheduled while every guest
/// sleeps with no timer armed still happen (the run used to end as idle at time zero).
#[test]
fn timeline_actions_happen_while_every_guest_sleeps() {
    use simvm_vmm::machine::MachineConfig;
    use simvm_vmm::seed::Seed;
    use simvm_vmm::world::{Ending, MachineAction, World, WorldConfig};

    if !kvm_or_skip("timeline_actions_happen_while_every_guest_sleeps") {
        return;
    }
    let dir = simvm_tests::temp_dir("sleepers");
    let kernel = dir.join("sleep.elf");
    std::fs::write(
        &kernel,
        simvm_vmm::test_elf::kernel(simvm_vmm::test_elf::SLEEP_FOREVER),
    )
    .expect("write the test kernel");
    let machine = MachineConfig::new("m1", kernel.clone(), vec![vec![0u8; 4096].into()], 64 << 20);
    let config = WorldConfig {
        timeline: vec![
            (
                2_000_000_000,
                MachineAction::Kill {
                    machine: 0,
                    policy: None,
                },
            ),
            (3_000_000_000, MachineAction::Restart { machine: 0 }),
        ],
        ..WorldConfig::new(Seed(1), vec![machine])
    };
    let mut lines = Vec::new();
    let outcome = World::new(config)
        .expect("build the world")
        .run(&mut |line| lines.push(line.to_string()))
        .expect("run the world");
    assert_eq!(outcome.ending, Ending::Idle, "{lines:?}");
    assert_eq!(outcome.machines[0].incarnations, 2, "{lines:?}");
    assert!(outcome.vtime_ns >= 3_000_000_000, "{}", outcome.vtime_ns);
    assert!(
        lines.iter().any(|l| l.ends_with("> kill m1: power lost")),
        "{lines:?}"
    );

    // Cut at `until` before the next action: the run's virtual time is `until`, though the
    // sleeping guest's clock stopped at its last event.
    let machine = MachineConfig::new("m1", kernel, vec![vec![0u8; 4096].into()], 64 << 20);
    let config = WorldConfig {
        timeline: vec![(
            10_000_000_000,
            MachineAction::Kill {
                machine: 0,
                policy: None,
            },
        )],
        until_ns: Some(5_000_000_000),
        ..WorldConfig::new(Seed(1), vec![machine])
    };
    let outcome = World::new(config)
        .expect("build the world")
        .run(&mut |_| {})
        .expect("run the world");
    assert_eq!(outcome.ending, Ending::Until);
    assert_eq!(outcome.vtime_ns, 5_000_000_000);
    assert!(outcome.machines[0].vtime_ns < 5_000_000_000);
}

/// A machine with a NIC in a world without a network: what it sends is dropped and counted, as
/// on an unplugged cable, instead of piling up in simvm's memory for the whole run.
#[test]
fn a_nic_without_a_network_drops_what_it_sends() {
    if !kvm_or_skip("a_nic_without_a_network_drops_what_it_sends") {
        return;
    }
    let command = "ping -c 3 -W 1 10.0.0.2; true";
    let scenario = Scenario::from_cli(1, vec!["sh".into(), "-c".into(), command.into()]);
    let built = image(None);
    let simulation = Simulation::new(scenario, 4).with_image(GuestImage {
        kernel: built.kernel,
        initramfs: built.initramfs,
    });
    let mut config = simulation
        .world_config(false, None)
        .expect("the world's configuration");
    assert!(config.network.is_none());
    let machine = &mut config.machines[0];
    machine.mac = Some(simvm_devices::net::MachineId(0).mac());
    if let Some(boot) = &mut machine.boot {
        boot.ip = Some("10.0.0.1/24".into());
    }
    let mut lines = Vec::new();
    let outcome = simvm_vmm::world::World::new(config)
        .expect("build the world")
        .run(&mut |line| lines.push(line.to_string()))
        .expect("run the world");
    let m1 = &outcome.machines[0];
    assert_eq!(m1.exit_status, Some(0), "{lines:#?}");
    // Three pings' worth of ARP requests, at least, went nowhere.
    assert!(
        m1.frames_unplugged >= 3,
        "{} frames: {lines:#?}",
        m1.frames_unplugged
    );
}

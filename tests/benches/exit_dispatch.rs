//! Per-exit cost of simvm's dispatch against a bare `KVM_RUN` loop on the same host.
//!
//! Both sides run the same guest, a ring-0 loop of `out` to COM1's scratch register (port
//! 0x3ff), so every iteration is one port-I/O exit. The bare side calls `KVM_RUN` and does
//! nothing with the exit. The simvm side goes through `Machine::step`: interrupt check and
//! clock-page publication before entry, the watchdog's progress counter, the serial device, the
//! virtual clock and the trace digest. The ratio of the two is what simvm adds per exit.
//!
//! Rounds alternate which side goes first and the median is reported, so a burst of host noise
//! (two shared cores) does not decide the result.
//!
//! Run: `cargo bench -p simvm-tests --bench exit_dispatch`
//! Environment: `SIMVM_BENCH_EXITS` (exits per side per round, default 200000),
//! `SIMVM_BENCH_ROUNDS` (default 5).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use simvm_tests::env_u64;
use simvm_vmm::boot::{self, BootImage};
use simvm_vmm::machine::{Machine, MachineConfig, Status};
use simvm_vmm::test_elf;
use simvm_vmm::trace::Trace;
use simvm_vmm::watchdog::Watchdog;
use vm_memory::GuestMemoryMmap;

const MEM_SIZE: u64 = 64 << 20;
const SCRATCH_PORT: u16 = 0x3ff;

/// The guest ELF in a temporary file, removed on drop.
struct GuestFile(PathBuf);

impl GuestFile {
    fn new(code: &[u8]) -> Self {
        let path =
            std::env::temp_dir().join(format!("simvm-bench-exit-{}.elf", std::process::id()));
        std::fs::write(&path, test_elf::kernel(code)).expect("write the guest ELF to the temp dir");
        Self(path)
    }
}

impl Drop for GuestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// simvm's loader wants an initramfs; the test guest never looks at it.
fn dummy_initramfs() -> Vec<std::sync::Arc<[u8]>> {
    vec![vec![0u8; 4096].into()]
}

/// A VM with nothing but memory and a vCPU, booted through simvm's loader so both sides start
/// from identical guest state.
struct BareVm {
    // Field order is drop order: vCPU, then VM, then the memory it maps.
    vcpu: VcpuFd,
    _vm: VmFd,
    _mem: GuestMemoryMmap,
}

impl BareVm {
    fn new(kvm: &Kvm, kernel: &Path) -> Self {
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        // SAFETY: `_mem` outlives the VM (field order).
        let mem = unsafe { simvm_vmm::machine::guest_memory(&vm, MEM_SIZE) }
            .expect("allocate and register guest memory");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let initramfs = dummy_initramfs();
        let image = BootImage {
            kernel,
            initramfs: &initramfs,
            cmdline: "",
            rng_seed: [0; 32],
        };
        let entry = boot::load(&mem, MEM_SIZE, &image).expect("load the test guest");
        boot::setup_vcpu(&vcpu, entry).expect("set up the vCPU");
        Self {
            vcpu,
            _vm: vm,
            _mem: mem,
        }
    }

    fn run(&mut self, exits: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..exits {
            match self.vcpu.run() {
                Ok(VcpuExit::IoOut(SCRATCH_PORT, _)) => {}
                other => panic!("bare VM: unexpected exit {other:?}"),
            }
        }
        start.elapsed()
    }
}

struct SimvmSide {
    machine: Machine,
    trace: Trace,
    watchdog: Watchdog,
    step: u64,
}

impl SimvmSide {
    fn new(kvm: &Kvm, kernel: &Path) -> Self {
        // No network: the guest only touches the serial port.
        let config = MachineConfig::new("bench", kernel.to_owned(), dummy_initramfs(), MEM_SIZE);
        Self {
            machine: Machine::new(kvm, config).expect("build the simvm machine"),
            trace: Trace::new(vec!["bench".into()]),
            // As `simvm run` does by default; it never fires here (exits are microseconds apart).
            watchdog: Watchdog::start(Duration::from_secs(5)).expect("start the watchdog"),
            step: 0,
        }
    }

    fn run(&mut self, exits: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..exits {
            self.step += 1;
            match self
                .machine
                .step(self.step, &mut self.trace, Some(&self.watchdog))
            {
                Ok(Status::Running) => {}
                other => panic!("simvm machine: unexpected status {other:?}"),
            }
        }
        start.elapsed()
    }
}

fn ns_per_exit(d: Duration, exits: u64) -> f64 {
    d.as_nanos() as f64 / exits as f64
}

/// The median; for an even count, the mean of the two middle values.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (values[(n - 1) / 2] + values[n / 2]) / 2.0
}

fn main() {
    let exits = env_u64("SIMVM_BENCH_EXITS", 200_000).max(1);
    let rounds = env_u64("SIMVM_BENCH_ROUNDS", 5).max(1);
    let kvm = Kvm::new().expect("open /dev/kvm (is KVM available and accessible?)");
    let guest = GuestFile::new(test_elf::COM1_SCRATCH_LOOP);
    let mut bare = BareVm::new(&kvm, &guest.0);
    let mut simvm = SimvmSide::new(&kvm, &guest.0);

    // Warm-up: page in guest memory and the emulator's paths on both sides.
    let warm = (exits / 10).max(1);
    bare.run(warm);
    simvm.run(warm);

    println!("exit_dispatch: {exits} port-I/O exits per side per round, {rounds} rounds");
    println!(
        "{:>5}  {:>14}  {:>14}  {:>7}",
        "round", "bare ns/exit", "simvm ns/exit", "ratio"
    );
    let (mut bare_ns, mut simvm_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate the order so slow drift on the host favours neither side.
        let (b, s) = if round % 2 == 0 {
            let b = bare.run(exits);
            (b, simvm.run(exits))
        } else {
            let s = simvm.run(exits);
            (bare.run(exits), s)
        };
        let (b, s) = (ns_per_exit(b, exits), ns_per_exit(s, exits));
        println!("{round:>5}  {b:>14.0}  {s:>14.0}  {:>6.2}x", s / b);
        bare_ns.push(b);
        simvm_ns.push(s);
        ratios.push(s / b);
    }
    let (b, s, r) = (
        median(&mut bare_ns),
        median(&mut simvm_ns),
        median(&mut ratios),
    );
    println!("median bare KVM_RUN loop:   {b:>8.0} ns/exit");
    println!("median simvm Machine::step: {s:>8.0} ns/exit");
    println!("simvm dispatch overhead:    {:>8.0} ns/exit", s - b);
    println!("ratio simvm/bare (median of rounds): {r:.2}x (target <= 1.30x)");
    println!(
        "trace: {} events, digest {}",
        simvm.trace.events(),
        simvm.trace.digest()
    );
}

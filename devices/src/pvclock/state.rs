//! Saved state of the simvm port block.

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::{page_fits, SimvmPorts};
use crate::abi::clock_page;
use crate::snapshot::{Snapshot, SnapshotError};

/// The clock page, the timer and the last reseed. The wall clock base is not saved: it is the
/// restoring machine's own (its `CLOCK_REALTIME` continues the world's, with the machine's own
/// offset), so the fresh device's stays and the next publish writes it into the page. What was
/// last published is not saved either: the next publish rewrites the page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortsState {
    /// Guest-physical address of the registered clock page.
    pub page: Option<u64>,
    /// The armed one-shot deadline, in virtual ns.
    pub deadline: Option<u64>,
    pub stall_limit: u32,
    /// The generation of the last reseed (0: none). Kept, so that the page's generation stays
    /// the one the guest consumed and a restore alone reseeds nothing; a pending one stays
    /// pending.
    pub entropy_gen: u32,
    /// The entropy of that reseed.
    pub entropy: [u8; clock_page::ENTROPY_SIZE],
    /// The generation of the last wall clock step (0: none), kept like `entropy_gen`.
    #[serde(default)]
    pub wall_gen: u32,
    /// The sum of the wall clock steps: the restoring machine's own base moves by as much.
    #[serde(default)]
    pub wall_steps_ns: i64,
}

impl Snapshot for SimvmPorts {
    type State = PortsState;

    fn save(&self) -> PortsState {
        PortsState {
            page: self.page.map(|page| page.0),
            deadline: self.deadline,
            stall_limit: self.stall_limit,
            entropy_gen: self.entropy_gen,
            entropy: self.entropy,
            wall_gen: self.wall_gen,
            wall_steps_ns: self.wall_steps_ns,
        }
    }

    fn restore(&mut self, state: &PortsState, mem: &GuestMemoryMmap) -> Result<(), SnapshotError> {
        if let Some(page) = state.page {
            if page % 4096 != 0 || !page_fits(mem, page) {
                let why = format!("clock page {page:#x} is not a page of guest RAM");
                return Err(SnapshotError::Invalid(why));
            }
        }
        if state.deadline.is_some() && state.page.is_none() {
            let why = "timer armed without a clock page".to_string();
            return Err(SnapshotError::Invalid(why));
        }
        if state.stall_limit == 0 {
            return Err(SnapshotError::Invalid("stall limit of 0".to_string()));
        }
        if state.entropy_gen == 0 && state.entropy != [0; clock_page::ENTROPY_SIZE] {
            let why = "entropy without a reseed generation".to_string();
            return Err(SnapshotError::Invalid(why));
        }
        self.page = state.page.map(vm_memory::GuestAddress);
        self.deadline = state.deadline;
        self.stall_limit = state.stall_limit;
        self.entropy_gen = state.entropy_gen;
        self.entropy = state.entropy;
        self.wall_base_ns = self.wall_base_ns.saturating_add_signed(state.wall_steps_ns);
        self.wall_steps_ns = state.wall_steps_ns;
        self.wall_gen = state.wall_gen;
        self.published = None;
        self.published_irq = None;
        self.published_entropy = None;
        self.published_wall = false;
        self.published_pages_by_vmm = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{self, clock_page};
    use crate::pvclock::PortEvent;
    use crate::virtio::testing::{copy_memory, memory, same_memory, MEM_SIZE};
    use vm_memory::{Bytes, GuestAddress};

    const PAGE: u64 = 0x42000;
    /// The port's value for `PAGE`: its page number.
    const PAGE_NUMBER: u32 = 0x42;

    fn out(ports: &mut SimvmPorts, mem: &GuestMemoryMmap, port: u16, value: u32) -> PortEvent {
        ports.write(mem, port, &value.to_le_bytes(), 1_000)
    }

    #[test]
    fn ports_state_round_trips_and_the_restored_block_behaves_the_same() {
        let mem = memory();
        let mut original = SimvmPorts::new(1_700_000_000_000_000_000, 32);
        out(&mut original, &mem, abi::PORT_CLOCK_PAGE, PAGE_NUMBER);
        let deadline_at = GuestAddress(PAGE + clock_page::TIMER_DEADLINE_NS);
        mem.write_obj(90_000u64, deadline_at).unwrap();
        out(&mut original, &mem, abi::PORT_TIMER, 1);
        original.publish(&mem, 2_000, true);

        let json = serde_json::to_string(&original.save()).unwrap();
        let saved: PortsState = serde_json::from_str(&json).unwrap();
        let copy = copy_memory(&mem);
        // Same wall clock base, so the pages can be compared (the next test gives it another).
        let mut restored = SimvmPorts::new(1_700_000_000_000_000_000, 64);
        restored.restore(&saved, &copy).unwrap();
        assert_eq!(restored.save(), saved);
        assert_eq!(restored.deadline(), Some(90_000));
        assert_eq!(restored.max_kick_reads(), original.max_kick_reads());

        for (ports, mem) in [(&mut original, &mem), (&mut restored, &copy)] {
            ports.publish(mem, 3_000, false);
            ports.timer_fired();
            mem.write_obj(120_000u64, deadline_at).unwrap();
            assert_eq!(
                out(ports, mem, abi::PORT_TIMER, 1),
                PortEvent::TimerArmed(120_000)
            );
        }
        assert!(same_memory(&mem, &copy));
    }

    /// The page in restored memory may not hold what the device last wrote (a template's memory
    /// is the guest's, the cache was the device's): the first publish writes it all.
    #[test]
    fn the_first_publish_after_a_restore_rewrites_the_page() {
        let mem = memory();
        let mut original = SimvmPorts::new(0, 64);
        out(&mut original, &mem, abi::PORT_CLOCK_PAGE, PAGE_NUMBER);
        original.publish(&mem, 2_000, false);
        // The restoring machine has its own wall clock base.
        let mut restored = SimvmPorts::new(9_000, 64);
        restored.restore(&original.save(), &mem).unwrap();
        mem.write_obj(7u64, GuestAddress(PAGE + clock_page::NOW_NS))
            .unwrap();
        mem.write_obj(7u32, GuestAddress(PAGE + clock_page::IRQ_PENDING))
            .unwrap();
        restored.publish(&mem, 2_000, false);
        let now: u64 = mem
            .read_obj(GuestAddress(PAGE + clock_page::NOW_NS))
            .unwrap();
        let flag: u32 = mem
            .read_obj(GuestAddress(PAGE + clock_page::IRQ_PENDING))
            .unwrap();
        assert_eq!((now, flag), (2_000, 0));
        let wall: u64 = mem
            .read_obj(GuestAddress(PAGE + clock_page::WALL_BASE_NS))
            .unwrap();
        assert_eq!(
            wall, 9_000,
            "the page keeps the saved machine's wall clock base"
        );
    }

    fn gen_and_entropy(mem: &GuestMemoryMmap) -> (u32, [u8; 32]) {
        let gen = mem
            .read_obj(GuestAddress(PAGE + clock_page::ENTROPY_GEN))
            .unwrap();
        let entropy = mem
            .read_obj(GuestAddress(PAGE + clock_page::ENTROPY))
            .unwrap();
        (gen, entropy)
    }

    /// The page keeps the generation the guest consumed, so a restore alone does not reseed it;
    /// a reseed not yet published is published after the restore; the next reseed continues.
    #[test]
    fn the_reseed_generation_survives_a_restore() {
        let mem = memory();
        let mut original = SimvmPorts::new(0, 64);
        out(&mut original, &mem, abi::PORT_CLOCK_PAGE, PAGE_NUMBER);
        original.reseed([1; 32]);
        original.publish(&mem, 2_000, false);
        let published = original.save();
        original.reseed([2; 32]);
        let pending = original.save();
        assert_eq!((published.entropy_gen, pending.entropy_gen), (1, 2));

        let json = serde_json::to_string(&published).unwrap();
        let saved: PortsState = serde_json::from_str(&json).unwrap();
        let copy = copy_memory(&mem);
        // The restored page may hold anything; the first publish rewrites the same generation.
        copy.write_obj(0u32, GuestAddress(PAGE + clock_page::ENTROPY_GEN))
            .unwrap();
        let mut restored = SimvmPorts::new(0, 64);
        restored.restore(&saved, &copy).unwrap();
        assert_eq!(restored.save(), saved);
        restored.publish(&copy, 3_000, false);
        assert_eq!(gen_and_entropy(&copy), (1, [1; 32]));
        restored.reseed([3; 32]);
        restored.publish(&copy, 4_000, false);
        assert_eq!(gen_and_entropy(&copy), (2, [3; 32]));

        let copy = copy_memory(&mem);
        let mut restored = SimvmPorts::new(0, 64);
        restored.restore(&pending, &copy).unwrap();
        assert_eq!(gen_and_entropy(&copy), (1, [1; 32]));
        restored.publish(&copy, 3_000, false);
        assert_eq!(gen_and_entropy(&copy), (2, [2; 32]));
    }

    #[test]
    fn entropy_without_a_generation_is_refused() {
        let mem = memory();
        let mut ports = SimvmPorts::new(0, 64);
        let mut bad = ports.save();
        bad.entropy[0] = 1;
        assert!(matches!(
            ports.restore(&bad, &mem),
            Err(SnapshotError::Invalid(_))
        ));
        bad.entropy_gen = 1;
        assert!(ports.restore(&bad, &mem).is_ok());
    }

    #[test]
    fn a_clock_page_outside_memory_is_refused_and_changes_nothing() {
        let mem = memory();
        let mut ports = SimvmPorts::new(0, 64);
        let outside = PortsState {
            // The clock page, then the host page.
            page: Some(MEM_SIZE as u64 - 8192),
            deadline: Some(1),
            stall_limit: 8,
            entropy_gen: 0,
            entropy: [0; clock_page::ENTROPY_SIZE],
            wall_gen: 0,
            wall_steps_ns: 0,
        };
        assert!(
            ports.restore(&outside, &mem).is_ok(),
            "the last two pages fit"
        );
        let mut ports = SimvmPorts::new(0, 64);
        for page in [MEM_SIZE as u64 - 4096, MEM_SIZE as u64, 0x1234, !0xfff] {
            let bad = PortsState {
                page: Some(page),
                ..outside.clone()
            };
            assert!(matches!(
                ports.restore(&bad, &mem),
                Err(SnapshotError::Invalid(_))
            ));
        }
        assert_eq!(ports.save(), SimvmPorts::new(0, 64).save());
    }
}

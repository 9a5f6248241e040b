//! Fuzz target of the simvm port block and clock page: any port access of any size, a guest
//! that scribbles on its clock page and the rest of its memory, and a VMM that publishes the time,
//! reseeds the guest, advances the time, jumps to the timer deadline and charges clock kicks as
//! `vmm/` does. Nothing may
//! let the guest move its clock further than the documented bounds, and the VMM's clock
//! arithmetic must not overflow.

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::fuzz::{self, Tally};

const MEM: u64 = 1 << 20;
/// What the VMM charges per clock read (its default).
const READ_COST_NS: u64 = 1_000;

#[derive(Clone, Debug)]
enum Op {
    /// `out` of `data` to `port`.
    Out { port: u16, data: Vec<u8> },
    /// `in` of `len` bytes from `port`.
    In { port: u16, len: usize },
    /// The guest writes `value` at `offset` into its clock page (if it has one) or anywhere.
    Poke {
        offset: u64,
        value: u64,
        in_page: bool,
    },
    /// Virtual time passes.
    Advance(u64),
    /// The VMM writes the time (and the interrupt flag) before an entry.
    Publish(bool),
    /// The guest halts: the world jumps to the deadline and fires the timer.
    Halt,
    /// The VMM hands the guest new entropy.
    Reseed([u8; 32]),
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        8 => (0..6u16).prop_map(|i| abi::PORT_BASE + 4 * i),
        2 => abi::PORT_BASE..abi::PORT_BASE + 0x18,
        1 => any::<u16>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let value32 = prop_oneof![
        4 => 0..=0x120u32,
        2 => fuzz::reg_value(),
        1 => (MAX_KICK_READS - 2)..=(MAX_KICK_READS + 2),
    ];
    let out4 = (port(), value32).prop_map(|(port, v)| Op::Out {
        port,
        data: v.to_le_bytes().to_vec(),
    });
    let out_odd = (port(), prop::collection::vec(any::<u8>(), 0..=8))
        .prop_map(|(port, data)| Op::Out { port, data });
    let deadline_ahead = prop_oneof![
        4 => 0..=10_000_000u64,
        2 => (MAX_TIMER_AHEAD_NS - 2)..=(MAX_TIMER_AHEAD_NS + 2),
        1 => any::<u64>(),
        1 => (u64::MAX - 4)..=u64::MAX,
    ];
    prop_oneof![
        8 => out4,
        2 => out_odd,
        2 => (port(), 0..=8usize).prop_map(|(port, len)| Op::In { port, len }),
        // Timer deadlines, mostly; now and then any field or any byte of memory.
        4 => deadline_ahead.prop_map(|value| Op::Poke {
            offset: clock_page::TIMER_DEADLINE_NS,
            value,
            in_page: true,
        }),
        1 => (0..4096u64 - 8, any::<u64>()).prop_map(|(offset, value)| Op::Poke {
            offset,
            value,
            in_page: true,
        }),
        1 => (0..MEM - 8, any::<u64>()).prop_map(|(offset, value)| Op::Poke {
            offset,
            value,
            in_page: false,
        }),
        3 => prop_oneof![0..=100_000u64, 0..=MAX_TIMER_AHEAD_NS].prop_map(Op::Advance),
        2 => any::<bool>().prop_map(Op::Publish),
        2 => Just(Op::Halt),
        1 => any::<[u8; 32]>().prop_map(Op::Reseed),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    wall_base: u64,
    stall_limit: u32,
    /// The machine's virtual time at the start.
    start: u64,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        prop_oneof![4 => Just(64u32), 1 => any::<u32>(), 1 => 0..=4u32],
        prop_oneof![Just(0u64), 0..1u64 << 50],
        prop::collection::vec(op(), 1..=40),
    )
        .prop_map(|(wall_base, stall_limit, start, ops)| Case {
            wall_base,
            stall_limit,
            start,
            ops,
        })
}

fn check(case: Case, tally: &mut Tally) {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut ports = SimvmPorts::new(case.wall_base, case.stall_limit);
    let max_kick = ports.max_kick_reads();
    assert_eq!(max_kick, case.stall_limit.max(1).max(MAX_KICK_READS));
    // The VMM's clock, with the checked arithmetic `vmm/` must use; the guest's page, as far as
    // the model knows.
    let mut now = case.start;
    let mut page: Option<u64> = None;
    // Whether the guest wrote into its page since it registered it.
    let mut scribbled = false;
    // The reseeds so far: their count and the last one's entropy.
    let mut reseed = (0u32, [0u8; 32]);
    for op in case.ops {
        match op {
            Op::Out { port, data } => {
                let before = ports.deadline();
                let event = ports.write(&mem, port, &data, now);
                out_event(
                    &mut ports, &mem, &mut page, before, port, &data, now, event, tally,
                );
                if let PortEvent::ClockPageRegistered(gpa) = event {
                    assert_eq!(entropy_on_page(&mem, gpa), reseed);
                }
                scribbled &= !matches!(event, PortEvent::ClockPageRegistered(_));
                if let Some(reads) = event.kick_reads() {
                    assert!(reads <= max_kick);
                    let cost = u64::from(reads) * READ_COST_NS;
                    now = now.checked_add(cost).expect("a kick overflows the clock");
                }
            }
            Op::In { port, len } => {
                let mut data = vec![0u8; len];
                ports.read(port, &mut data);
                let magic = port == abi::PORT_CLOCK_PAGE && len == 4;
                if magic {
                    assert_eq!(data, abi::PROBE_MAGIC.to_le_bytes());
                } else {
                    assert!(data.iter().all(|&b| b == 0xff));
                }
                tally.hit(if magic { "probe" } else { "read" });
            }
            Op::Poke {
                offset,
                value,
                in_page,
            } => {
                let at = match (in_page, page) {
                    (true, Some(page)) => page + offset,
                    _ => offset,
                };
                mem.write_obj(value, GuestAddress(at)).unwrap();
                scribbled |= page.is_some_and(|page| at + 8 > page && at < page + 4096);
            }
            Op::Advance(ns) => now = now.checked_add(ns).expect("time overflows"),
            Op::Publish(irq) => {
                ports.publish(&mem, now, irq);
                // Publishing writes only what changed since it last wrote, so a page the guest
                // scribbled on may disagree; one it left alone must not.
                if let (Some(page), false) = (page, scribbled) {
                    let at = |field| GuestAddress(page + field);
                    assert_eq!(mem.read_obj::<u64>(at(clock_page::NOW_NS)).unwrap(), now);
                    let flag = mem.read_obj::<u32>(at(clock_page::IRQ_PENDING)).unwrap();
                    assert_eq!(flag, u32::from(irq));
                    assert_eq!(entropy_on_page(&mem, page), reseed);
                    tally.hit("published");
                    if reseed.0 > 0 {
                        tally.hit("reseed_published");
                    }
                }
            }
            Op::Halt => {
                if let Some(deadline) = ports.deadline() {
                    // Armed at an earlier `now`, so within the bound of this one.
                    assert!(deadline <= now.saturating_add(MAX_TIMER_AHEAD_NS));
                    now = now.max(deadline);
                    ports.timer_fired();
                    tally.hit("timer_fired");
                }
            }
            Op::Reseed(entropy) => {
                ports.reseed(entropy);
                reseed = (reseed.0 + 1, entropy);
            }
        }
        // However the guest tried, its clock stays far from the end of time.
        assert!(now < u64::MAX / 2, "now {now}");
    }
}

/// The generation and entropy in the clock page at `page`.
fn entropy_on_page(mem: &GuestMemoryMmap, page: u64) -> (u32, [u8; 32]) {
    let gen = mem.read_obj(GuestAddress(page + clock_page::ENTROPY_GEN));
    let entropy = mem.read_obj(GuestAddress(page + clock_page::ENTROPY));
    (gen.unwrap(), entropy.unwrap())
}

/// Checks one `out` against the ABI.
#[allow(clippy::too_many_arguments)]
fn out_event(
    ports: &mut SimvmPorts,
    mem: &GuestMemoryMmap,
    page: &mut Option<u64>,
    before: Option<u64>,
    port: u16,
    data: &[u8],
    now: u64,
    event: PortEvent,
    tally: &mut Tally,
) {
    let value = <[u8; 4]>::try_from(data).map(u32::from_le_bytes);
    let Ok(value) = value else {
        assert!(matches!(event, PortEvent::Ignored { port: p, .. } if p == port));
        assert_eq!(ports.deadline(), before);
        tally.hit("odd_size");
        return;
    };
    let read_u64 = |at: u64| mem.read_obj::<u64>(GuestAddress(at)).unwrap();
    match event {
        PortEvent::ClockPageRegistered(gpa) => {
            assert_eq!((port, gpa), (abi::PORT_CLOCK_PAGE, u64::from(value) << 12));
            // The clock page and the host page after it.
            assert!(gpa + 8192 <= MEM);
            assert_eq!(read_u64(gpa + clock_page::NOW_NS), now);
            assert_eq!(read_u64(gpa + clock_page::WALL_BASE_NS), ports.wall_base_ns);
            assert_eq!(read_u64(gpa + clock_page::TSC_KHZ), abi::VIRTUAL_TSC_KHZ);
            *page = Some(gpa);
            tally.hit("page_registered");
        }
        PortEvent::ClockPageRejected(gpa) => {
            assert_eq!((port, gpa), (abi::PORT_CLOCK_PAGE, u64::from(value) << 12));
            assert!(gpa + 8192 > MEM);
            assert_eq!(ports.page, page.map(GuestAddress));
            tally.hit("page_rejected");
        }
        PortEvent::TimerArmed(deadline) => {
            assert!(port == abi::PORT_TIMER && value != 0);
            let page = page.expect("armed without a page");
            assert_eq!(deadline, read_u64(page + clock_page::TIMER_DEADLINE_NS));
            assert!(deadline <= now.saturating_add(MAX_TIMER_AHEAD_NS));
            assert_eq!(ports.deadline(), Some(deadline));
            tally.hit("armed");
        }
        PortEvent::TimerDisarmed => {
            assert_eq!((port, value), (abi::PORT_TIMER, 0));
            assert_eq!(ports.deadline(), None);
            tally.hit("disarmed");
        }
        PortEvent::ClockKick(reads) => {
            assert_eq!((port, reads), (abi::PORT_CLOCK_KICK, value));
            assert!(reads <= ports.max_kick_reads());
            tally.hit("kick");
        }
        PortEvent::IrqPoll => {
            assert_eq!(port, abi::PORT_IRQ_POLL);
            tally.hit("irq_poll");
        }
        PortEvent::Control(control) => {
            assert_eq!(port, abi::PORT_CONTROL);
            let [event, arg, ..] = value.to_le_bytes();
            let expected = match event {
                abi::control::READY => ControlEvent::Ready,
                abi::control::EXIT => ControlEvent::Exit(arg),
                abi::control::PANIC => ControlEvent::Panic,
                abi::control::POWEROFF => ControlEvent::PowerOff,
                abi::control::RESTART => ControlEvent::Restart,
                abi::control::IDENTITY => ControlEvent::Identity(value >> 8),
                _ => ControlEvent::Unknown(value),
            };
            assert_eq!(control, expected);
            tally.hit("control");
        }
        PortEvent::Ignored { port: p, value: v } => {
            assert_eq!((p, v), (port, value));
            let known = [
                abi::PORT_CLOCK_PAGE,
                abi::PORT_CLOCK_KICK,
                abi::PORT_CONTROL,
                abi::PORT_IRQ_POLL,
            ];
            assert!(!known.contains(&port));
            if port == abi::PORT_TIMER {
                assert!(page.is_none() && value != 0);
            }
            assert_eq!(ports.deadline(), before);
            tally.hit("ignored");
        }
        PortEvent::Absurd(Absurd::ClockKick { reads, charged }) => {
            assert_eq!((port, reads), (abi::PORT_CLOCK_KICK, value));
            assert!(reads > ports.max_kick_reads());
            assert_eq!(charged, ports.max_kick_reads());
            tally.hit("absurd_kick");
        }
        PortEvent::Absurd(Absurd::TimerDeadline { deadline, now: at }) => {
            assert!(port == abi::PORT_TIMER && value != 0);
            assert_eq!(at, now);
            assert!(deadline > now.saturating_add(MAX_TIMER_AHEAD_NS));
            assert_eq!(ports.deadline(), None);
            tally.hit("absurd_deadline");
        }
    }
}

#[test]
fn fuzz_pvclock_ports() {
    let expected = [
        "page_registered",
        "page_rejected",
        "armed",
        "disarmed",
        "kick",
        "absurd_kick",
        "absurd_deadline",
        "timer_fired",
        "control",
        "irq_poll",
        "ignored",
        "odd_size",
        "probe",
        "read",
        "published",
        "reseed_published",
    ];
    fuzz::run("pvclock_ports", 1000, case(), &expected, check);
}

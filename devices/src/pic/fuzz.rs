//! Fuzz target of the 8259A pair: any sequence of port reads and writes from the guest,
//! interleaved with device interrupts and the VMM's acknowledge cycles. The pair must never
//! deliver a masked line, a vector before initialisation or outside the programmed bases, and
//! `has_pending` must agree with what an acknowledge cycle finds.

use proptest::prelude::*;

use super::*;
use crate::fuzz::{self, Tally};

#[derive(Clone, Debug)]
enum Op {
    Out(u16, u8),
    In(u16),
    Edge(u8),
    Edges(u16),
    Level(u8, bool),
    Ack,
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        10 => prop::sample::select(PORTS.to_vec()),
        1 => any::<u16>(),
    ]
}

/// Command bytes as Linux writes them (ICW1, OCW2 EOIs and rotations, OCW3 reads and poll),
/// and anything else.
fn command() -> impl Strategy<Value = u8> {
    prop_oneof![
        2 => prop::sample::select(vec![0x11u8, 0x13, 0x10, 0x20, 0x0a, 0x0b, 0x0c, 0x68, 0x48, 0x80, 0x00, 0xa0, 0xc4]),
        1 => (0..8u8).prop_map(|irq| 0x60 | irq),
        1 => (0..8u8).prop_map(|irq| 0xe0 | irq),
        2 => any::<u8>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (port(), prop_oneof![command(), Just(0x30), Just(0x38), Just(0x04), Just(0x02), Just(0x01), Just(0x03)])
            .prop_map(|(port, value)| Op::Out(port, value)),
        2 => port().prop_map(Op::In),
        3 => (0..18u8).prop_map(Op::Edge),
        1 => any::<u16>().prop_map(Op::Edges),
        2 => (0..18u8, any::<bool>()).prop_map(|(irq, high)| Op::Level(irq, high)),
        4 => Just(Op::Ack),
    ]
}

/// Linux's initialisation, so that deliveries happen from the start in most cases.
fn linux_init(pic: &mut Pic) {
    for (port, value) in [
        (MASTER_CMD, 0x11),
        (MASTER_DATA, 0x30),
        (MASTER_DATA, 0x04),
        (MASTER_DATA, 0x01),
        (SLAVE_CMD, 0x11),
        (SLAVE_DATA, 0x38),
        (SLAVE_DATA, 0x02),
        (SLAVE_DATA, 0x01),
        (MASTER_DATA, 0x00),
        (SLAVE_DATA, 0x00),
    ] {
        pic.write(port, value);
    }
}

fn check((init, ops): (bool, Vec<Op>), tally: &mut Tally) {
    let mut pic = Pic::new();
    if init {
        linux_init(&mut pic);
    }
    for op in ops {
        match op {
            Op::Out(port, value) => {
                let before = pic.clone();
                pic.write(port, value);
                match port {
                    ELCR_MASTER => assert_eq!(pic.read(port), value & ELCR_MASTER_WRITABLE),
                    ELCR_SLAVE => assert_eq!(pic.read(port), value & ELCR_SLAVE_WRITABLE),
                    MASTER_DATA | SLAVE_DATA => {
                        let chip = if port == MASTER_DATA {
                            &before.master
                        } else {
                            &before.slave
                        };
                        // Outside initialisation the data port is the mask register.
                        if matches!(chip.init, InitState::Ready | InitState::PowerOn) {
                            assert_eq!(pic.read(port), value, "the mask reads back");
                        }
                    }
                    _ => {}
                }
                tally.hit("out");
            }
            Op::In(port) => {
                let value = pic.read(port);
                if !PORTS.contains(&port) {
                    assert_eq!(value, 0xff);
                }
                tally.hit("in");
            }
            Op::Edge(irq) => pic.raise_edge(irq),
            Op::Edges(irqs) => pic.raise_edges(irqs),
            Op::Level(irq, high) => pic.set_level(irq, high),
            Op::Ack => ack(&mut pic, tally),
        }
        // INTR as sampled must be what an acknowledge cycle finds.
        assert_eq!(pic.has_pending(), pic.clone().acknowledge().is_some());
    }
}

fn ack(pic: &mut Pic, tally: &mut Tally) {
    let before = pic.clone();
    let Some(vector) = pic.acknowledge() else {
        assert!(!before.has_pending());
        tally.hit("nothing");
        return;
    };
    assert_eq!(
        before.master.init,
        InitState::Ready,
        "delivered before initialisation"
    );
    let irq = vector & 7;
    let master_irq = before.master.pending(before.cascade()).unwrap();
    if master_irq != CASCADE_IRQ {
        assert_eq!(irq, master_irq);
        assert_eq!(vector & 0xf8, before.master.vector_base);
        assert_eq!(before.master.imr & (1 << irq), 0, "masked line delivered");
        assert_ne!(
            before.master.requests() & (1 << irq),
            0,
            "nothing requested"
        );
        if !before.master.auto_eoi {
            assert_ne!(pic.master.isr & (1 << irq), 0);
        }
        tally.hit("master");
    } else {
        // Through the cascade: the slave has a genuine request, unmasked on both chips.
        assert_eq!(before.slave.init, InitState::Ready);
        assert_eq!(vector & 0xf8, before.slave.vector_base);
        assert_eq!(before.master.imr & (1 << CASCADE_IRQ), 0);
        assert_eq!(before.slave.imr & (1 << irq), 0, "masked line delivered");
        assert_ne!(before.slave.requests() & (1 << irq), 0, "nothing requested");
        if !before.slave.auto_eoi {
            assert_ne!(pic.slave.isr & (1 << irq), 0);
        }
        tally.hit("slave");
    }
    // An edge request is consumed; a level one may remain.
    let chip = if master_irq == CASCADE_IRQ {
        &pic.slave
    } else {
        &pic.master
    };
    assert_eq!(chip.irr & (1 << irq), 0);
}

#[test]
fn fuzz_pic() {
    let case = (
        prop_oneof![3 => Just(true), 1 => Just(false)],
        prop::collection::vec(op(), 1..=60),
    );
    fuzz::run(
        "pic",
        800,
        case,
        &["out", "in", "nothing", "master", "slave"],
        check,
    );
}

//! Fuzz target of the console UART, through the bus as the machine drives it: any access size at
//! any offset. A reference model of the data path (divisor latch, loopback FIFO, output) must
//! agree byte for byte, and the UART may only ever raise IRQ 4.

use std::collections::VecDeque;

use proptest::prelude::*;
use vm_memory::GuestAddress;

use super::*;
use crate::fuzz::{self, Tally};

/// vm-superio's receive FIFO, which loopback fills.
const FIFO_SIZE: usize = 64;

#[derive(Clone, Debug)]
enum Op {
    Out {
        offset: u64,
        data: Vec<u8>,
    },
    In {
        offset: u64,
        len: usize,
    },
    /// The machine drains the output after an exit.
    Drain,
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        10 => 0..8u64,
        1 => 8..=300u64,
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let byte = prop_oneof![
        2 => any::<u8>(),
        1 => prop::sample::select(vec![0x80u8, 0x03, 0x10, 0x1b, 0x0f, 0x02, 0x00, 0x9b]),
    ];
    prop_oneof![
        6 => (offset(), byte).prop_map(|(offset, b)| Op::Out { offset, data: vec![b] }),
        1 => (offset(), prop::collection::vec(any::<u8>(), 0..=4))
            .prop_map(|(offset, data)| Op::Out { offset, data }),
        4 => (offset(), prop_oneof![4 => Just(1usize), 1 => 0..=8usize])
            .prop_map(|(offset, len)| Op::In { offset, len }),
        1 => Just(Op::Drain),
    ]
}

/// The registers the data path depends on.
struct Model {
    lcr: u8,
    mcr: u8,
    ier: u8,
    scr: u8,
    divisor: [u8; 2],
    fifo: VecDeque<u8>,
    output: Vec<u8>,
}

impl Model {
    /// A 16550A after reset, as vm-superio sets it: 8N1, OUT2, divisor 12 (9600 baud).
    fn new() -> Self {
        Self {
            lcr: 0x03,
            mcr: 0x08,
            ier: 0,
            scr: 0,
            divisor: [0x0c, 0],
            fifo: VecDeque::new(),
            output: Vec::new(),
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & 0x80 != 0
    }

    fn write(&mut self, offset: u8, value: u8) {
        match offset {
            0 | 1 if self.dlab() => self.divisor[usize::from(offset)] = value,
            // Loopback: into the receive FIFO while it has room.
            0 if self.mcr & 0x10 != 0 && self.fifo.len() < FIFO_SIZE => self.fifo.push_back(value),
            0 if self.mcr & 0x10 != 0 => {}
            0 => self.output.push(value),
            1 => self.ier = value & 0x0f,
            3 => self.lcr = value,
            4 => self.mcr = value,
            7 => self.scr = value,
            _ => {}
        }
    }

    /// The value a read must return, where the model knows it.
    fn read(&mut self, offset: u8) -> Option<u8> {
        match offset {
            0 | 1 if self.dlab() => Some(self.divisor[usize::from(offset)]),
            0 => Some(self.fifo.pop_front().unwrap_or(0)),
            1 => Some(self.ier),
            3 => Some(self.lcr),
            4 => Some(self.mcr),
            7 => Some(self.scr),
            8.. => Some(0),
            _ => None,
        }
    }
}

fn check(ops: Vec<Op>, tally: &mut Tally) {
    let lines = IrqLines::default();
    let mut uart = Console::new(lines.clone());
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let mut model = Model::new();
    let mut writes = 0usize;
    for op in ops {
        match op {
            Op::Out { offset, data } => {
                let access = BusAccess {
                    addr: u64::from(COM1_BASE).wrapping_add(offset),
                    offset,
                };
                BusDevice::write(&mut uart, &mem, access, &data);
                if let (Ok(offset), Some(&byte)) = (u8::try_from(offset), data.first()) {
                    model.write(offset, byte);
                    writes += 1;
                    tally.hit(if offset == 0 && !model.dlab() {
                        "thr"
                    } else {
                        "out"
                    });
                }
            }
            Op::In { offset, len } => {
                let mut data = vec![0xa5u8; len];
                let access = BusAccess {
                    addr: u64::from(COM1_BASE).wrapping_add(offset),
                    offset,
                };
                BusDevice::read(&mut uart, access, &mut data);
                // A read without a byte to fill has no effect on the UART.
                let Some(&value) = data.first() else { continue };
                assert!(data.iter().all(|&b| b == value), "{data:?}");
                let Ok(offset) = u8::try_from(offset) else {
                    assert_eq!(value, 0);
                    continue;
                };
                if let Some(expected) = model.read(offset) {
                    assert_eq!(value, expected, "register {offset}");
                    tally.hit(if offset == 0 && !model.dlab() {
                        "rbr"
                    } else {
                        "in"
                    });
                }
                if offset == 5 {
                    assert_eq!(value & 0x60, 0x60, "THR always empty");
                    assert_eq!(value & 1 != 0, !model.fifo.is_empty(), "data ready");
                    tally.hit("lsr");
                }
            }
            Op::Drain => {
                assert_eq!(uart.take_output(), std::mem::take(&mut model.output));
                tally.hit("drain");
            }
        }
        assert_eq!(uart.output(), &model.output[..]);
        // Output grows by at most one byte per write, for the machine to drain after the exit.
        assert!(uart.output().len() <= writes);
        assert_eq!(lines.take() & !(1 << IRQ_SERIAL), 0, "only IRQ 4");
    }
}

#[test]
fn fuzz_serial() {
    let expected = ["thr", "out", "rbr", "in", "lsr", "drain"];
    let case = prop::collection::vec(op(), 1..=80);
    fuzz::run("serial", 1000, case, &expected, check);
}

//! Interrupt lines shared between the devices that raise them and the interrupt controller.

use std::cell::Cell;
use std::rc::Rc;

/// The machine's sixteen ISA interrupt lines, as a set of edges raised since the last drain.
///
/// Devices keep a clone and call [`IrqLines::raise`]; the machine drains the set into the
/// interrupt controller after every exit. Everything runs on the one simulation thread, so a
/// shared `Cell` is all the synchronisation needed.
#[derive(Clone, Debug, Default)]
pub struct IrqLines(Rc<Cell<u16>>);

impl IrqLines {
    /// Records an edge on `irq` (0-15; other values are ignored).
    pub fn raise(&self, irq: u8) {
        if irq < 16 {
            self.0.set(self.0.get() | 1 << irq);
        }
    }

    /// Returns the lines raised since the last call and clears them.
    pub fn take(&self) -> u16 {
        self.0.replace(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_edges_are_drained_once() {
        let lines = IrqLines::default();
        let device_side = lines.clone();
        device_side.raise(4);
        device_side.raise(0);
        device_side.raise(99);
        assert_eq!(lines.take(), 0b1_0001);
        assert_eq!(lines.take(), 0);
    }
}

//! The COM1 16550A UART the guest uses as its console, on vm-superio's [`Serial`].
//!
//! Transmitted bytes collect in memory for the VMM to drain after an exit; the interrupt goes to
//! IRQ 4 through [`IrqLines`]. There is no input yet: reads of RBR return 0 and LSR never reports
//! data ready.

use std::cell::Cell;
use std::convert::Infallible;

use vm_memory::GuestMemoryMmap;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

use crate::abi::IRQ_SERIAL;
use crate::bus::{BusAccess, BusDevice};
use crate::irq::IrqLines;

/// First I/O port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports of a 16550A, starting at [`COM1_BASE`].
pub const COM1_PORTS: u16 = 8;

/// Raises one IRQ edge on the machine's interrupt lines.
#[derive(Debug)]
struct IrqTrigger {
    lines: IrqLines,
    irq: u8,
    /// Set while restoring: vm-superio re-raises a pending interrupt then, but the saved machine
    /// had already raised it (its PIC holds it).
    muted: Cell<bool>,
}

impl IrqTrigger {
    fn new(lines: IrqLines) -> Self {
        Self {
            lines,
            irq: IRQ_SERIAL,
            muted: Cell::new(false),
        }
    }
}

impl Trigger for IrqTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        if !self.muted.get() {
            self.lines.raise(self.irq);
        }
        Ok(())
    }
}

/// The console UART: register emulation by vm-superio, output kept in memory.
pub struct Console {
    serial: Serial<IrqTrigger, NoEvents, Vec<u8>>,
}

impl Console {
    /// A UART in its reset state that raises IRQ 4 on `lines`.
    pub fn new(lines: IrqLines) -> Self {
        Console {
            serial: Serial::new(IrqTrigger::new(lines), Vec::new()),
        }
    }

    /// Handles an `inb` from register `offset` (port minus [`COM1_BASE`]); offsets beyond the
    /// UART's eight read as 0.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.serial.read(offset)
    }

    /// Handles an `outb` to register `offset` (port minus [`COM1_BASE`]).
    pub fn write(&mut self, offset: u8, value: u8) {
        // Neither error vm-superio can report happens here: appending to a `Vec` cannot fail and
        // raising an edge is infallible. Were a byte lost anyway, vm-superio has still signalled
        // THRE, so the guest's driver carries on; there is nothing more to do.
        let _ = self.serial.write(offset, value);
    }

    /// The bytes the guest has transmitted since the last [`Console::take_output`].
    pub fn output(&self) -> &[u8] {
        self.serial.writer()
    }

    /// Hands over the transmitted bytes, leaving the buffer empty.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(self.serial.writer_mut())
    }
}

/// On the port bus the console claims COM1's eight ports; the offset is the register.
impl BusDevice for Console {
    fn read(&mut self, access: BusAccess, data: &mut [u8]) {
        // Reading RBR or IIR has side effects; an access with no byte to fill must not have them.
        if data.is_empty() {
            return;
        }
        let value = u8::try_from(access.offset).map_or(0, |offset| Console::read(self, offset));
        data.fill(value);
    }

    fn write(&mut self, _mem: &GuestMemoryMmap, access: BusAccess, data: &[u8]) {
        if let (Ok(offset), Some(&byte)) = (u8::try_from(access.offset), data.first()) {
            Console::write(self, offset, byte);
        }
    }
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // vm-superio's `Serial` is not `Debug`; its state is what matters.
        f.debug_struct("Console")
            .field("state", &self.serial.state())
            .field("pending_output", &self.output().len())
            .finish()
    }
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod fuzz;

mod state;
pub use state::ConsoleState;

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u8 = 0;
    const IER: u8 = 1;
    const IIR: u8 = 2;
    const FCR: u8 = 2;
    const LCR: u8 = 3;
    const MCR: u8 = 4;
    const LSR: u8 = 5;
    const MSR: u8 = 6;
    const SCR: u8 = 7;
    const IRQ4: u16 = 1 << IRQ_SERIAL;

    fn console() -> (Console, IrqLines) {
        let lines = IrqLines::default();
        (Console::new(lines.clone()), lines)
    }

    #[test]
    fn linux_8250_autoconfig_finds_a_16550a() {
        let (mut uart, _lines) = console();
        // The IER probe: writable low nibble.
        let saved_ier = uart.read(IER);
        uart.write(IER, 0);
        assert_eq!(uart.read(IER) & 0x0f, 0);
        uart.write(IER, 0x0f);
        assert_eq!(uart.read(IER) & 0x0f, 0x0f);
        uart.write(IER, saved_ier);
        // Scratch register.
        uart.write(SCR, 0xa5);
        assert_eq!(uart.read(SCR), 0xa5);
        // Loopback: RTS and OUT2 come back as CTS and DCD.
        uart.write(MCR, 0x10 | 0x08 | 0x02);
        assert_eq!(uart.read(MSR) & 0xf0, 0x80 | 0x10);
        uart.write(MCR, 0);
        // FIFO enabled: IIR bits 7:6 both set means a 16550A.
        uart.write(LCR, 0xbf);
        uart.write(LCR, 0);
        uart.write(FCR, 0x01);
        assert_eq!(uart.read(IIR) & 0xc0, 0xc0);
    }

    #[test]
    fn divisor_latch_is_separate_from_data_registers() {
        let (mut uart, _lines) = console();
        uart.write(LCR, 0x80);
        uart.write(0, 0x01); // DLL: 115200 baud
        uart.write(1, 0x00); // DLM
        assert_eq!(uart.read(0), 0x01);
        uart.write(LCR, 0x03); // 8N1
        assert_eq!(uart.read(LCR), 0x03);
        assert_eq!(uart.read(IER), 0, "DLM did not land in IER");
        assert!(uart.take_output().is_empty(), "DLL did not transmit");
    }

    #[test]
    fn polled_output_reaches_the_buffer_without_interrupts() {
        let (mut uart, lines) = console();
        for &byte in b"hi\n" {
            assert_ne!(uart.read(LSR) & 0x20, 0, "THR empty");
            uart.write(THR, byte);
        }
        assert_eq!(uart.output(), b"hi\n");
        assert_eq!(uart.take_output(), b"hi\n");
        assert!(uart.output().is_empty());
        assert_eq!(lines.take(), 0);
        assert_eq!(uart.read(IIR) & 0x0f, 0x01, "no interrupt pending");
    }

    #[test]
    fn thre_interrupts_raise_irq4() {
        let (mut uart, lines) = console();
        uart.write(IER, 0x02);
        assert_eq!(
            lines.take(),
            IRQ4,
            "enabling THRI with THR empty interrupts at once"
        );
        assert_eq!(uart.read(IIR) & 0x0f, 0x02);
        assert_eq!(uart.read(IIR) & 0x0f, 0x01, "reading IIR acknowledged THRE");

        uart.write(THR, b'a');
        assert_eq!(lines.take(), IRQ4);
        assert_eq!(uart.read(IIR) & 0x0f, 0x02);
        uart.write(THR, b'b');
        assert_eq!(lines.take(), IRQ4);
        assert_eq!(uart.take_output(), b"ab");

        uart.write(IER, 0);
        uart.write(THR, b'c');
        assert_eq!(lines.take(), 0, "THRI disabled");
    }

    /// Found by `fuzz_serial`: an empty read used to pop a received byte.
    #[test]
    fn an_access_of_no_bytes_has_no_side_effects() {
        let (mut uart, _lines) = console();
        uart.write(MCR, 0x10); // loopback: THR feeds RBR
        uart.write(THR, b'x');
        let access = BusAccess {
            addr: COM1_BASE.into(),
            offset: 0,
        };
        BusDevice::read(&mut uart, access, &mut []);
        assert_eq!(uart.read(THR), b'x');
    }

    #[test]
    fn reads_without_input_are_harmless() {
        let (mut uart, lines) = console();
        assert_eq!(uart.read(THR), 0);
        assert_eq!(uart.read(LSR) & 0x01, 0, "no data ready");
        assert_eq!(uart.read(LSR) & 0x60, 0x60);
        for offset in 0..=u8::MAX {
            uart.read(offset);
            uart.write(offset, 0);
        }
        let _ = lines.take();
    }
}

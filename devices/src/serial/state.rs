//! Saved state of the console UART.

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

use super::{Console, IrqTrigger};
use crate::snapshot::{Snapshot, SnapshotError};

/// The UART's registers and receive FIFO: vm-superio's `SerialState`, mirrored. Transmitted
/// bytes are not state: the VMM drains them ([`Console::take_output`]) before saving, and the
/// fresh device's stay where they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Received bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

impl Snapshot for Console {
    type State = ConsoleState;

    fn save(&self) -> ConsoleState {
        let s = self.serial.state();
        ConsoleState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    fn restore(
        &mut self,
        state: &ConsoleState,
        _mem: &GuestMemoryMmap,
    ) -> Result<(), SnapshotError> {
        let s = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let trigger = IrqTrigger::new(self.serial.interrupt_evt().lines.clone());
        trigger.muted.set(true);
        let mut serial = Serial::from_state(&s, trigger, NoEvents, Vec::new()).map_err(|e| {
            let len = state.in_buffer.len();
            SnapshotError::Invalid(format!("receive FIFO of {len} bytes: {e:?}"))
        })?;
        serial.interrupt_evt().muted.set(false);
        *serial.writer_mut() = std::mem::take(self.serial.writer_mut());
        self.serial = serial;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqLines;
    use crate::virtio::testing::memory;

    const THR: u8 = 0;
    const IER: u8 = 1;
    const IIR: u8 = 2;
    const LCR: u8 = 3;
    const MCR: u8 = 4;
    const LSR: u8 = 5;
    const SCR: u8 = 7;

    /// 9600 baud 7E1, receive interrupts on, and two bytes waiting in the receive FIFO (sent in
    /// loopback mode) with their interrupt raised and drained.
    fn busy_console() -> (Console, IrqLines) {
        let lines = IrqLines::default();
        let mut uart = Console::new(lines.clone());
        uart.write(LCR, 0x80);
        uart.write(0, 0x0c);
        uart.write(1, 0x00);
        uart.write(LCR, 0x1a);
        uart.write(SCR, 0x5a);
        uart.write(IER, 0x01);
        uart.write(MCR, 0x10 | 0x08);
        uart.write(THR, b'o');
        uart.write(THR, b'k');
        assert_ne!(lines.take(), 0);
        (uart, lines)
    }

    /// Reads the guest's 8250 driver would make, and the edges they raise.
    fn drive(uart: &mut Console, lines: &IrqLines) -> (Vec<u8>, u16) {
        let mut seen = Vec::new();
        for offset in [IIR, LSR, THR, LSR, THR, LSR, IIR, LCR, SCR] {
            seen.push(uart.read(offset));
        }
        uart.write(MCR, 0x08);
        uart.write(IER, 0x03);
        uart.write(THR, b'!');
        (seen, lines.take())
    }

    #[test]
    fn console_state_round_trips_and_the_restored_uart_behaves_the_same() {
        let mem = memory();
        let (mut original, lines) = busy_console();
        let json = serde_json::to_string(&original.save()).unwrap();
        let saved: ConsoleState = serde_json::from_str(&json).unwrap();
        assert_eq!(saved.in_buffer, b"ok");
        assert_eq!(saved.baud_divisor_low, 0x0c);

        let fresh_lines = IrqLines::default();
        let mut restored = Console::new(fresh_lines.clone());
        restored.restore(&saved, &mem).unwrap();
        assert_eq!(restored.save(), saved);
        assert_eq!(fresh_lines.take(), 0, "the saved machine already raised it");

        let a = drive(&mut original, &lines);
        let b = drive(&mut restored, &fresh_lines);
        assert_eq!(a, b);
        assert_eq!(&a.0[..5], &[0xc4, 0x61, b'o', 0x61, b'k']);
        assert_ne!(a.1, 0);
        assert_eq!(original.take_output(), restored.take_output());
        assert_eq!(restored.save(), original.save());
    }

    #[test]
    fn an_overfull_receive_fifo_is_refused_and_changes_nothing() {
        let mem = memory();
        let (busy, _) = busy_console();
        let mut bad = busy.save();
        bad.in_buffer = vec![0; 65];
        let (mut uart, _lines) = busy_console();
        uart.write(MCR, 0);
        uart.write(THR, b'x');
        let before = uart.save();
        assert!(matches!(
            uart.restore(&bad, &mem),
            Err(SnapshotError::Invalid(_))
        ));
        assert_eq!(uart.save(), before);
        assert_eq!(uart.output(), b"x");
    }
}

//! The PC's cascaded pair of 8259A interrupt controllers, with the ELCR edge/level register.
//!
//! Complete enough for Linux's `arch/x86/kernel/i8259.c`: the ICW1-ICW4 initialisation sequence
//! (8086 mode, cascade, auto-EOI), OCW1 masks, OCW2 EOI and rotation commands, OCW3 IRR/ISR
//! read-back, special mask and poll modes, rotating priority and the ELCR.
//!
//! The VMM drives it at VM exits only: it feeds device interrupts in with [`Pic::raise_edges`] or
//! [`Pic::set_level`], asks [`Pic::has_pending`] whether the CPU's INTR input is asserted, and when
//! the vCPU can take an interrupt runs the acknowledge cycle with [`Pic::acknowledge`], which yields
//! the vector to inject.
//!
//! Deliberate simplifications:
//! - The slave's INT output reaches master IR2 as a level, re-evaluated on every query, so a
//!   cascaded request can never be lost or latched stale. As a consequence the two halves of an
//!   INTA cycle always agree and no spurious IRQ 15 arises.
//! - Hardware answers a request withdrawn between INTR and INTA with a spurious IRQ 7. Here the VMM
//!   samples INTR and acknowledges in the same step, so [`Pic::acknowledge`] returns `None`
//!   instead and nothing is injected. ISR bookkeeping stays exact, so Linux's ISR-based spurious
//!   check (`i8259A_irq_real`) still tells a genuine IRQ 7 from a spurious one.
//! - ICW1's LTIM bit (all inputs level-triggered) and 8080 mode are ignored: PC chipsets use the
//!   ELCR for level triggering, and x86 guests always select 8086 mode.

/// Master command port (ICW1, OCW2, OCW3; reads IRR, ISR or the poll word).
pub const MASTER_CMD: u16 = 0x20;
/// Master data port (ICW2-ICW4 during initialisation, the mask register otherwise).
pub const MASTER_DATA: u16 = 0x21;
/// Slave command port.
pub const SLAVE_CMD: u16 = 0xa0;
/// Slave data port.
pub const SLAVE_DATA: u16 = 0xa1;
/// ELCR for IRQs 0-7 (a set bit makes the line level-triggered).
pub const ELCR_MASTER: u16 = 0x4d0;
/// ELCR for IRQs 8-15.
pub const ELCR_SLAVE: u16 = 0x4d1;
/// The master input the slave's INT output is wired to.
pub const CASCADE_IRQ: u8 = 2;
/// Every port the pair answers.
pub const PORTS: [u16; 6] = [
    MASTER_CMD,
    MASTER_DATA,
    SLAVE_CMD,
    SLAVE_DATA,
    ELCR_MASTER,
    ELCR_SLAVE,
];

/// ELCR bits that can be set: IRQ 0, 1 and 2 (timer, keyboard, cascade) and IRQ 8 and 13 (RTC,
/// FPU) are always edge-triggered on a PC chipset. Linux masks with the same values.
const ELCR_MASTER_WRITABLE: u8 = 0xf8;
const ELCR_SLAVE_WRITABLE: u8 = 0xde;

/// Which byte the data port expects next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum InitState {
    /// Never initialised since power-on: masks can be written, but with no vector base the chip
    /// delivers nothing (injecting vector 0 + IRQ would land on CPU exception vectors).
    #[default]
    PowerOn,
    Icw2,
    Icw3,
    Icw4,
    Ready,
}

/// One 8259A.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Chip {
    /// Latched requests, cleared by the acknowledge cycle.
    irr: u8,
    /// Input levels, for edge detection and for level-triggered (ELCR) lines.
    lines: u8,
    imr: u8,
    isr: u8,
    elcr: u8,
    elcr_writable: u8,
    /// The IR with the highest priority; the others follow in circular order.
    highest_priority: u8,
    vector_base: u8,
    init: InitState,
    needs_icw4: bool,
    single: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_mask: bool,
    read_isr: bool,
    poll: bool,
}

impl Chip {
    fn new(elcr_writable: u8) -> Self {
        // Masked at power-on so that nothing is delivered before the guest has set the chip up.
        Chip {
            imr: 0xff,
            elcr_writable,
            ..Chip::default()
        }
    }

    /// IRR as the guest sees it: latched edges plus level-triggered lines currently high.
    fn requests(&self) -> u8 {
        self.irr | (self.lines & self.elcr)
    }

    /// Position in the current priority order: 0 is served first.
    fn rank(&self, irq: u8) -> u8 {
        irq.wrapping_sub(self.highest_priority) & 7
    }

    /// The IR of highest priority among `bits`.
    fn highest(&self, bits: u8) -> Option<u8> {
        (0..8)
            .map(|rank| (rank + self.highest_priority) & 7)
            .find(|irq| bits & (1 << irq) != 0)
    }

    /// The IR this chip signals on its INT output, if any. `cascade` carries the slave's request
    /// into master IR2.
    fn pending(&self, cascade: u8) -> Option<u8> {
        if self.init != InitState::Ready {
            return None;
        }
        let irq = self.highest((self.requests() | cascade) & !self.imr)?;
        // In special mask mode, masking an in-service level lets lower levels through.
        let in_service = if self.special_mask {
            self.isr & !self.imr
        } else {
            self.isr
        };
        match self.highest(in_service) {
            Some(busy) if self.rank(busy) <= self.rank(irq) => None,
            _ => Some(irq),
        }
    }

    /// This chip's part of an INTA cycle for `irq`.
    fn acknowledge(&mut self, irq: u8) {
        // A level-triggered line that is still high keeps requesting through `lines`.
        self.irr &= !(1 << irq);
        if !self.auto_eoi {
            self.isr |= 1 << irq;
        } else if self.rotate_on_auto_eoi {
            self.highest_priority = (irq + 1) & 7;
        }
    }

    /// Drives input `irq` to `high`; a rising edge latches a request unless the line is
    /// level-triggered, whose request simply follows the line.
    fn set_line(&mut self, irq: u8, high: bool) {
        let bit = 1 << irq;
        if high {
            if self.lines & bit == 0 {
                self.irr |= bit & !self.elcr;
            }
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    fn read_command(&mut self, cascade: u8) -> u8 {
        if self.poll {
            // A poll read is an acknowledge cycle without the vector.
            self.poll = false;
            return match self.pending(cascade) {
                Some(irq) => {
                    self.acknowledge(irq);
                    0x80 | irq
                }
                None => 0,
            };
        }
        if self.read_isr {
            self.isr
        } else {
            self.requests() | cascade
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            self.icw1(value);
        } else if value & 0x08 != 0 {
            self.ocw3(value);
        } else {
            self.ocw2(value);
        }
    }

    fn write_data(&mut self, value: u8) {
        self.init = match self.init {
            InitState::PowerOn | InitState::Ready => {
                self.imr = value;
                self.init
            }
            InitState::Icw2 => {
                self.vector_base = value & 0xf8;
                match (self.single, self.needs_icw4) {
                    (false, _) => InitState::Icw3,
                    (true, true) => InitState::Icw4,
                    (true, false) => InitState::Ready,
                }
            }
            // The cascade wiring is fixed: ICW3 only confirms it.
            InitState::Icw3 if self.needs_icw4 => InitState::Icw4,
            InitState::Icw3 => InitState::Ready,
            InitState::Icw4 => {
                self.auto_eoi = value & 0x02 != 0;
                InitState::Ready
            }
        };
    }

    /// Starts initialisation: as on the hardware this clears the masks, the in-service bits and
    /// the edge latches (a line already high must fall and rise again), resets the priority
    /// order and selects IRR for reading. Input levels and the ELCR belong to the board and stay.
    fn icw1(&mut self, value: u8) {
        *self = Chip {
            lines: self.lines,
            elcr: self.elcr,
            elcr_writable: self.elcr_writable,
            init: InitState::Icw2,
            needs_icw4: value & 0x01 != 0,
            single: value & 0x02 != 0,
            ..Chip::default()
        };
    }

    fn ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            // Non-specific EOI, optionally rotating the served level to lowest priority.
            0b001 | 0b101 => {
                if let Some(irq) = self.highest(self.isr) {
                    self.isr &= !(1 << irq);
                    if value & 0x80 != 0 {
                        self.highest_priority = (irq + 1) & 7;
                    }
                }
            }
            // Specific EOI, optionally rotating.
            0b011 | 0b111 => {
                self.isr &= !(1 << level);
                if value & 0x80 != 0 {
                    self.highest_priority = (level + 1) & 7;
                }
            }
            // Set priority: `level` becomes the lowest.
            0b110 => self.highest_priority = (level + 1) & 7,
            0b100 => self.rotate_on_auto_eoi = true,
            0b000 => self.rotate_on_auto_eoi = false,
            _ => {} // 0b010: no operation.
        }
    }

    fn ocw3(&mut self, value: u8) {
        if value & 0x04 != 0 {
            self.poll = true;
        }
        if value & 0x02 != 0 {
            self.read_isr = value & 0x01 != 0;
        }
        if value & 0x40 != 0 {
            self.special_mask = value & 0x20 != 0;
        }
    }

    fn write_elcr(&mut self, value: u8) {
        self.elcr = value & self.elcr_writable;
    }
}

/// The master/slave 8259A pair of a PC, slave on master IR2, with the ELCR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// A pair in its power-on state: all lines masked and nothing delivered until the guest has
    /// run the initialisation sequence.
    pub fn new() -> Self {
        Pic {
            master: Chip::new(ELCR_MASTER_WRITABLE),
            slave: Chip::new(ELCR_SLAVE_WRITABLE),
        }
    }

    /// Handles an `inb` from one of the PIC or ELCR ports; other ports read as all ones.
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            MASTER_CMD => {
                let cascade = self.cascade();
                self.master.read_command(cascade)
            }
            MASTER_DATA => self.master.imr,
            SLAVE_CMD => self.slave.read_command(0),
            SLAVE_DATA => self.slave.imr,
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => 0xff,
        }
    }

    /// Handles an `outb` to one of the PIC or ELCR ports; other ports are ignored.
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            MASTER_CMD => self.master.write_command(value),
            MASTER_DATA => self.master.write_data(value),
            SLAVE_CMD => self.slave.write_command(value),
            SLAVE_DATA => self.slave.write_data(value),
            ELCR_MASTER => self.master.write_elcr(value),
            ELCR_SLAVE => self.slave.write_elcr(value),
            _ => {}
        }
    }

    /// Latches a request on `irq` (0-15), as an edge does; it stays requested until acknowledged,
    /// even on a level-triggered line. IRQ 2 is the cascade input and other values are ignored.
    pub fn raise_edge(&mut self, irq: u8) {
        if let Some((chip, line)) = self.input(irq) {
            chip.irr |= 1 << line;
        }
    }

    /// Latches an edge on every IRQ whose bit is set, as drained from
    /// [`IrqLines::take`](crate::irq::IrqLines::take).
    pub fn raise_edges(&mut self, irqs: u16) {
        for irq in 0..16 {
            if irqs & (1 << irq) != 0 {
                self.raise_edge(irq);
            }
        }
    }

    /// Drives the input of `irq` (0-15) to a level. On an edge-triggered line a rising edge
    /// latches a request; on a level-triggered (ELCR) line the request lasts as long as the line
    /// is high, so it re-asserts after each EOI. IRQ 2 and other values are ignored.
    pub fn set_level(&mut self, irq: u8, high: bool) {
        if let Some((chip, line)) = self.input(irq) {
            chip.set_line(line, high);
        }
    }

    /// Whether the CPU's INTR input is asserted: an unmasked request outranks everything in
    /// service. The VMM injects only when this is true and the vCPU accepts interrupts; otherwise
    /// the request waits for the guest's next exit.
    pub fn has_pending(&self) -> bool {
        self.master.pending(self.cascade()).is_some()
    }

    /// Runs the CPU's interrupt-acknowledge cycle: marks the winning request in service (unless in
    /// auto-EOI mode), clears its edge latch, and returns the vector to inject. `None` when INTR
    /// is not asserted: there is nothing to inject.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let irq = self.master.pending(self.cascade())?;
        self.master.acknowledge(irq);
        if irq != CASCADE_IRQ {
            return Some(self.master.vector_base | irq);
        }
        // `cascade()` has just seen the slave's request, so it is there; were it not, the
        // hardware's answer is IR7 with nothing marked in service (spurious IRQ 15).
        let irq = match self.slave.pending(0) {
            Some(irq) => {
                self.slave.acknowledge(irq);
                irq
            }
            None => 7,
        };
        Some(self.slave.vector_base | irq)
    }

    /// The slave's INT output as it appears on master IR2.
    fn cascade(&self) -> u8 {
        if self.slave.pending(0).is_some() {
            1 << CASCADE_IRQ
        } else {
            0
        }
    }

    /// The chip and its input line for a device IRQ.
    fn input(&mut self, irq: u8) -> Option<(&mut Chip, u8)> {
        match irq {
            CASCADE_IRQ => None,
            0..=7 => Some((&mut self.master, irq)),
            8..=15 => Some((&mut self.slave, irq - 8)),
            _ => None,
        }
    }
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod fuzz;

mod state;
pub use state::{ChipState, InitStep, PicState};

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's `init_8259A(auto_eoi)` followed by `probe_8259A()` and its mask restore.
    fn linux_init(pic: &mut Pic, auto_eoi: bool) {
        pic.write(MASTER_DATA, 0xff);
        pic.write(MASTER_CMD, 0x11); // ICW1: edge, cascade, ICW4 follows
        pic.write(MASTER_DATA, 0x30); // ICW2: vectors 0x30-0x37
        pic.write(MASTER_DATA, 1 << CASCADE_IRQ); // ICW3: slave on IR2
        pic.write(MASTER_DATA, if auto_eoi { 0x03 } else { 0x01 }); // ICW4: 8086 mode
        pic.write(SLAVE_CMD, 0x11);
        pic.write(SLAVE_DATA, 0x38);
        pic.write(SLAVE_DATA, CASCADE_IRQ); // slave identity 2
        pic.write(SLAVE_DATA, 0x01);
        // probe_8259A: the mask must read back, or Linux falls back to a NULL legacy PIC.
        pic.write(SLAVE_DATA, 0xff);
        pic.write(MASTER_DATA, 0xfb);
        assert_eq!(pic.read(MASTER_DATA), 0xfb);
        pic.write(SLAVE_DATA, 0xff);
    }

    fn linux_pic() -> Pic {
        let mut pic = Pic::new();
        linux_init(&mut pic, false);
        pic
    }

    /// Linux's `unmask_8259A_irq`, with its cached mask folded into the current IMR.
    fn unmask(pic: &mut Pic, irq: u8) {
        let port = if irq < 8 { MASTER_DATA } else { SLAVE_DATA };
        let imr = pic.read(port) & !(1 << (irq & 7));
        pic.write(port, imr);
    }

    /// Linux's `mask_and_ack_8259A` for a delivered `irq`, then the unmask after handling.
    fn linux_ack(pic: &mut Pic, irq: u8) {
        let (data, cmd) = if irq < 8 {
            (MASTER_DATA, MASTER_CMD)
        } else {
            (SLAVE_DATA, SLAVE_CMD)
        };
        let imr = pic.read(data);
        pic.write(data, imr | 1 << (irq & 7));
        pic.write(cmd, 0x60 | (irq & 7));
        if irq >= 8 {
            pic.write(MASTER_CMD, 0x60 | CASCADE_IRQ);
        }
        unmask(pic, irq);
    }

    /// Linux's `i8259A_irq_real`: reads ISR through OCW3, then selects IRR again.
    fn isr(pic: &mut Pic, cmd: u16) -> u8 {
        pic.write(cmd, 0x0b);
        let isr = pic.read(cmd);
        pic.write(cmd, 0x0a);
        isr
    }

    #[test]
    fn nothing_is_delivered_before_initialisation() {
        let mut pic = Pic::new();
        pic.write(MASTER_DATA, 0);
        pic.raise_edge(0);
        assert!(!pic.has_pending());
        assert_eq!(pic.acknowledge(), None);
        // Mid-sequence neither.
        pic.write(MASTER_CMD, 0x11);
        pic.write(MASTER_DATA, 0x30);
        pic.raise_edge(0);
        assert!(!pic.has_pending());
    }

    #[test]
    fn linux_init_timer_round_trip() {
        let mut pic = linux_pic();
        assert_eq!(pic.read(MASTER_DATA), 0xfb, "only the cascade unmasked");
        pic.raise_edge(0);
        assert!(!pic.has_pending(), "masked");
        unmask(&mut pic, 0);
        assert!(
            pic.has_pending(),
            "an edge latched while masked is delivered on unmask"
        );
        assert_eq!(pic.acknowledge(), Some(0x30));
        assert!(!pic.has_pending());
        assert_eq!(pic.read(MASTER_CMD), 0, "IRR cleared by INTA");
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x01);

        // A second tick while the first is in service waits for the EOI.
        pic.raise_edge(0);
        assert!(!pic.has_pending());
        assert_eq!(pic.read(MASTER_CMD), 0x01, "IRR shows the waiting request");
        linux_ack(&mut pic, 0);
        assert_eq!(isr(&mut pic, MASTER_CMD), 0);
        assert_eq!(pic.acknowledge(), Some(0x30));
    }

    #[test]
    fn masks_read_back_and_gate_delivery() {
        let mut pic = linux_pic();
        for value in [0x00, 0xa5, 0xff] {
            pic.write(MASTER_DATA, value);
            pic.write(SLAVE_DATA, !value);
            assert_eq!(pic.read(MASTER_DATA), value);
            assert_eq!(pic.read(SLAVE_DATA), !value);
        }
        pic.write(MASTER_DATA, 0xef);
        pic.raise_edge(3);
        assert!(!pic.has_pending());
        pic.raise_edge(4);
        assert_eq!(pic.acknowledge(), Some(0x34));
    }

    #[test]
    fn fixed_priority_and_nesting() {
        let mut pic = linux_pic();
        pic.write(MASTER_DATA, 0x00);
        pic.raise_edges(1 << 4 | 1 << 6);
        assert_eq!(pic.acknowledge(), Some(0x34));
        assert!(!pic.has_pending(), "IR6 ranks below IR4 in service");
        pic.raise_edge(1);
        assert_eq!(pic.acknowledge(), Some(0x31), "IR1 preempts IR4");
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x12);
        pic.write(MASTER_CMD, 0x20); // non-specific EOI ends the highest: IR1
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x10);
        assert!(!pic.has_pending());
        pic.write(MASTER_CMD, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x36));
        pic.write(MASTER_CMD, 0x66); // specific EOI
        assert_eq!(isr(&mut pic, MASTER_CMD), 0);
        assert_eq!(pic.acknowledge(), None);
    }

    #[test]
    fn rotation_commands_move_the_lowest_priority() {
        let mut pic = linux_pic();
        pic.write(MASTER_DATA, 0x00);
        pic.write(MASTER_CMD, 0xc4); // set priority: IR4 lowest, so IR5 highest
        pic.raise_edges(1 << 0 | 1 << 6);
        assert_eq!(pic.acknowledge(), Some(0x36));
        pic.write(MASTER_CMD, 0xa0); // rotate on non-specific EOI: IR6 lowest, IR7 highest
        pic.raise_edge(6);
        assert_eq!(pic.acknowledge(), Some(0x30));
        pic.write(MASTER_CMD, 0xe0); // rotate on specific EOI 0: IR1 highest
        assert_eq!(pic.acknowledge(), Some(0x36));
    }

    #[test]
    fn slave_interrupts_go_through_the_cascade() {
        let mut pic = linux_pic();
        unmask(&mut pic, 12);
        pic.raise_edge(12);
        assert!(pic.has_pending());
        assert_eq!(pic.read(MASTER_CMD), 0x04, "master IRR shows the cascade");
        assert_eq!(pic.read(SLAVE_CMD), 0x10);
        assert_eq!(pic.acknowledge(), Some(0x3c));
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x04);
        assert_eq!(isr(&mut pic, SLAVE_CMD), 0x10);

        // While the cascade is in service, master IR3 waits but IR0 gets through, and so does
        // nothing else from the slave until its EOI.
        unmask(&mut pic, 0);
        unmask(&mut pic, 3);
        unmask(&mut pic, 9);
        pic.raise_edges(1 << 0 | 1 << 3 | 1 << 9);
        assert_eq!(pic.acknowledge(), Some(0x30));
        assert!(!pic.has_pending());
        linux_ack(&mut pic, 0);
        assert!(!pic.has_pending(), "IR2 is still in service");
        linux_ack(&mut pic, 12);
        assert_eq!(
            pic.acknowledge(),
            Some(0x39),
            "IRQ 9 outranks IRQ 3 via IR2"
        );
        linux_ack(&mut pic, 9);
        assert_eq!(pic.acknowledge(), Some(0x33));
    }

    #[test]
    fn masked_cascade_blocks_the_slave() {
        let mut pic = linux_pic();
        pic.write(MASTER_DATA, 0xff);
        unmask(&mut pic, 8);
        pic.raise_edge(8);
        assert!(!pic.has_pending());
        unmask(&mut pic, 2);
        assert_eq!(pic.acknowledge(), Some(0x38));
    }

    #[test]
    fn withdrawn_request_is_not_injected() {
        let mut pic = linux_pic();
        unmask(&mut pic, 7);
        pic.raise_edge(7);
        assert!(pic.has_pending());
        // The guest masks the line before the VMM gets to inject: nothing to deliver, and the
        // ISR stays clear, which is how Linux recognises a spurious IRQ 7.
        pic.write(MASTER_DATA, 0xff);
        assert_eq!(pic.acknowledge(), None);
        assert_eq!(isr(&mut pic, MASTER_CMD), 0);
        // The latch survives, so the request arrives once unmasked, this time genuine.
        unmask(&mut pic, 7);
        assert_eq!(pic.acknowledge(), Some(0x37));
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x80);
    }

    #[test]
    fn auto_eoi_leaves_nothing_in_service() {
        let mut pic = Pic::new();
        linux_init(&mut pic, true);
        unmask(&mut pic, 0);
        pic.raise_edge(0);
        assert_eq!(pic.acknowledge(), Some(0x30));
        assert_eq!(isr(&mut pic, MASTER_CMD), 0);
        pic.raise_edge(0);
        assert_eq!(pic.acknowledge(), Some(0x30), "no EOI needed");

        // The slave still runs with normal EOI behind an auto-EOI master.
        unmask(&mut pic, 2);
        unmask(&mut pic, 10);
        pic.raise_edge(10);
        assert_eq!(pic.acknowledge(), Some(0x3a));
        assert_eq!(isr(&mut pic, MASTER_CMD), 0);
        assert_eq!(isr(&mut pic, SLAVE_CMD), 0x04);
    }

    #[test]
    fn rotate_in_auto_eoi_mode() {
        let mut pic = Pic::new();
        linux_init(&mut pic, true);
        pic.write(MASTER_DATA, 0x00);
        pic.write(MASTER_CMD, 0x80);
        pic.raise_edges(1 << 1 | 1 << 3);
        assert_eq!(pic.acknowledge(), Some(0x31));
        pic.raise_edge(1);
        assert_eq!(pic.acknowledge(), Some(0x33), "IR1 rotated to lowest");
        pic.write(MASTER_CMD, 0x00);
    }

    #[test]
    fn elcr_level_lines_reassert_after_eoi() {
        let mut pic = linux_pic();
        pic.write(ELCR_MASTER, 0xff);
        pic.write(ELCR_SLAVE, 0xff);
        assert_eq!(pic.read(ELCR_MASTER), 0xf8, "IRQ 0-2 are edge only");
        assert_eq!(pic.read(ELCR_SLAVE), 0xde, "IRQ 8 and 13 are edge only");
        pic.write(ELCR_MASTER, 1 << 5);
        unmask(&mut pic, 5);

        pic.set_level(5, true);
        assert_eq!(pic.acknowledge(), Some(0x35));
        assert_eq!(pic.read(MASTER_CMD), 0x20, "a held level stays in IRR");
        assert!(!pic.has_pending());
        pic.write(MASTER_CMD, 0x65);
        assert_eq!(pic.acknowledge(), Some(0x35), "still high: requests again");
        pic.write(MASTER_CMD, 0x65);
        pic.set_level(5, false);
        assert!(!pic.has_pending());
        assert_eq!(pic.read(MASTER_CMD), 0);
    }

    #[test]
    fn edge_lines_latch_only_rising_edges() {
        let mut pic = linux_pic();
        unmask(&mut pic, 6);
        pic.set_level(6, true);
        assert_eq!(pic.acknowledge(), Some(0x36));
        pic.write(MASTER_CMD, 0x20);
        assert!(!pic.has_pending(), "a held edge line does not re-request");
        pic.set_level(6, false);
        pic.set_level(6, true);
        assert_eq!(pic.acknowledge(), Some(0x36));
    }

    #[test]
    fn reinitialisation_clears_state_but_not_levels() {
        let mut pic = linux_pic();
        pic.write(ELCR_MASTER, 1 << 5);
        unmask(&mut pic, 4);
        pic.raise_edge(4);
        assert_eq!(pic.acknowledge(), Some(0x34));
        pic.raise_edge(4);
        pic.set_level(5, true);
        linux_init(&mut pic, false);
        assert_eq!(isr(&mut pic, MASTER_CMD), 0);
        assert_eq!(
            pic.read(MASTER_CMD),
            0x20,
            "edge latch cleared, level line still high"
        );
        assert_eq!(pic.read(ELCR_MASTER), 0x20);
    }

    #[test]
    fn poll_mode_acknowledges_without_a_vector() {
        let mut pic = linux_pic();
        pic.write(MASTER_CMD, 0x0c);
        assert_eq!(pic.read(MASTER_CMD), 0, "nothing pending");
        unmask(&mut pic, 3);
        pic.raise_edge(3);
        pic.write(MASTER_CMD, 0x0c);
        assert_eq!(pic.read(MASTER_CMD), 0x83);
        assert_eq!(pic.read(MASTER_CMD), 0, "poll lasts one read: IRR again");
        assert_eq!(isr(&mut pic, MASTER_CMD), 0x08);
    }

    #[test]
    fn special_mask_mode_lets_lower_levels_in() {
        let mut pic = linux_pic();
        pic.write(MASTER_DATA, 0x00);
        pic.raise_edge(3);
        assert_eq!(pic.acknowledge(), Some(0x33));
        pic.raise_edge(5);
        assert!(!pic.has_pending());
        pic.write(MASTER_CMD, 0x68); // set special mask
        pic.write(MASTER_DATA, 0x08);
        assert_eq!(pic.acknowledge(), Some(0x35));
        pic.write(MASTER_CMD, 0x48); // clear special mask
    }

    #[test]
    fn unknown_ports_and_irqs_are_harmless() {
        let mut pic = linux_pic();
        assert_eq!(pic.read(0x22), 0xff);
        pic.write(0x22, 0);
        pic.raise_edge(2);
        pic.raise_edge(16);
        pic.set_level(200, true);
        pic.write(MASTER_DATA, 0);
        assert!(!pic.has_pending());
    }

    #[test]
    fn arbitrary_guest_traffic_never_panics() {
        let mut pic = Pic::new();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..200_000 {
            // xorshift64: a fixed, dependency-free sequence.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let [a, b, c, ..] = state.to_le_bytes();
            let port = PORTS[usize::from(a) % PORTS.len()];
            match b % 5 {
                0 => pic.write(port, c),
                1 => _ = pic.read(port),
                2 => pic.raise_edge(c % 20),
                3 => pic.set_level(c % 20, c & 0x80 != 0),
                _ => {
                    if let Some(vector) = pic.acknowledge() {
                        assert!(
                            vector == pic.master.vector_base | (vector & 7)
                                || vector == pic.slave.vector_base | (vector & 7)
                        );
                    }
                }
            }
        }
    }
}

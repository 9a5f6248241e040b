//! Saved state of the PIC pair.

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::{Chip, InitState, Pic};
use crate::snapshot::{Snapshot, SnapshotError};

/// Both chips; the ELCR's writable bits are the board's and stay the fresh device's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PicState {
    pub master: ChipState,
    pub slave: ChipState,
}

/// One 8259A's registers and modes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChipState {
    /// Latched requests.
    pub irr: u8,
    /// Input levels.
    pub lines: u8,
    pub imr: u8,
    pub isr: u8,
    pub elcr: u8,
    pub highest_priority: u8,
    pub vector_base: u8,
    pub init: InitStep,
    pub needs_icw4: bool,
    pub single: bool,
    pub auto_eoi: bool,
    pub rotate_on_auto_eoi: bool,
    pub special_mask: bool,
    pub read_isr: bool,
    pub poll: bool,
}

/// Which byte the data port expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitStep {
    PowerOn,
    Icw2,
    Icw3,
    Icw4,
    Ready,
}

impl Snapshot for Pic {
    type State = PicState;

    fn save(&self) -> PicState {
        PicState {
            master: save_chip(&self.master),
            slave: save_chip(&self.slave),
        }
    }

    fn restore(&mut self, state: &PicState, _mem: &GuestMemoryMmap) -> Result<(), SnapshotError> {
        let master = restore_chip(&state.master, &self.master, "master")?;
        let slave = restore_chip(&state.slave, &self.slave, "slave")?;
        self.master = master;
        self.slave = slave;
        Ok(())
    }
}

fn save_chip(chip: &Chip) -> ChipState {
    ChipState {
        irr: chip.irr,
        lines: chip.lines,
        imr: chip.imr,
        isr: chip.isr,
        elcr: chip.elcr,
        highest_priority: chip.highest_priority,
        vector_base: chip.vector_base,
        init: match chip.init {
            InitState::PowerOn => InitStep::PowerOn,
            InitState::Icw2 => InitStep::Icw2,
            InitState::Icw3 => InitStep::Icw3,
            InitState::Icw4 => InitStep::Icw4,
            InitState::Ready => InitStep::Ready,
        },
        needs_icw4: chip.needs_icw4,
        single: chip.single,
        auto_eoi: chip.auto_eoi,
        rotate_on_auto_eoi: chip.rotate_on_auto_eoi,
        special_mask: chip.special_mask,
        read_isr: chip.read_isr,
        poll: chip.poll,
    }
}

/// The chip `state` describes, on the board of `fresh`.
fn restore_chip(state: &ChipState, fresh: &Chip, name: &str) -> Result<Chip, SnapshotError> {
    // Values the register writes can never produce.
    if state.elcr & !fresh.elcr_writable != 0 {
        let why = format!("{name} ELCR {:#04x} sets a fixed edge line", state.elcr);
        return Err(SnapshotError::Invalid(why));
    }
    if state.highest_priority > 7 || state.vector_base & 7 != 0 {
        let why = format!(
            "{name} priority {} or vector base {:#04x} out of range",
            state.highest_priority, state.vector_base
        );
        return Err(SnapshotError::Invalid(why));
    }
    Ok(Chip {
        irr: state.irr,
        lines: state.lines,
        imr: state.imr,
        isr: state.isr,
        elcr: state.elcr,
        elcr_writable: fresh.elcr_writable,
        highest_priority: state.highest_priority,
        vector_base: state.vector_base,
        init: match state.init {
            InitStep::PowerOn => InitState::PowerOn,
            InitStep::Icw2 => InitState::Icw2,
            InitStep::Icw3 => InitState::Icw3,
            InitStep::Icw4 => InitState::Icw4,
            InitStep::Ready => InitState::Ready,
        },
        needs_icw4: state.needs_icw4,
        single: state.single,
        auto_eoi: state.auto_eoi,
        rotate_on_auto_eoi: state.rotate_on_auto_eoi,
        special_mask: state.special_mask,
        read_isr: state.read_isr,
        poll: state.poll,
    })
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use crate::virtio::testing::memory;

    fn round_trip(state: &PicState) -> PicState {
        serde_json::from_str(&serde_json::to_string(state).unwrap()).unwrap()
    }

    /// Initialised as Linux does, with IRQ 4 and 9 unmasked, IRQ 10 level-triggered and high,
    /// IRQ 4 in service and IRQ 9 requested behind it.
    fn busy_pic() -> Pic {
        let mut pic = Pic::new();
        pic.write(MASTER_CMD, 0x11);
        pic.write(MASTER_DATA, 0x30);
        pic.write(MASTER_DATA, 1 << CASCADE_IRQ);
        pic.write(MASTER_DATA, 0x01);
        pic.write(SLAVE_CMD, 0x11);
        pic.write(SLAVE_DATA, 0x38);
        pic.write(SLAVE_DATA, CASCADE_IRQ);
        pic.write(SLAVE_DATA, 0x01);
        pic.write(MASTER_DATA, !(1 << 4 | 1 << CASCADE_IRQ));
        pic.write(SLAVE_DATA, !(1 << 1 | 1 << 2));
        pic.write(ELCR_SLAVE, 1 << 2);
        pic.raise_edge(4);
        assert_eq!(pic.acknowledge(), Some(0x34));
        pic.raise_edge(9);
        pic.set_level(10, true);
        pic.write(MASTER_CMD, 0x0b); // OCW3: read ISR next
        pic
    }

    #[test]
    fn pic_state_round_trips_and_the_restored_pair_behaves_the_same() {
        let mem = memory();
        let mut original = busy_pic();
        let saved = round_trip(&original.save());
        assert_eq!(saved.master.isr, 1 << 4);
        let mut restored = Pic::new();
        restored.restore(&saved, &mem).unwrap();
        assert_eq!(restored.save(), saved);
        assert_eq!(restored, original);
        // The same guest and device inputs from here on give the same answers.
        let mut runs = Vec::new();
        for pic in [&mut original, &mut restored] {
            let mut seen = vec![pic.read(MASTER_CMD)];
            for _ in 0..2 {
                // IRQ 9 comes in on IR2, above IRQ 4 in service; then IRQ 10's level.
                seen.extend(pic.acknowledge());
                pic.write(SLAVE_CMD, 0x20);
                pic.write(MASTER_CMD, 0x20);
            }
            pic.set_level(10, false);
            pic.write(MASTER_CMD, 0x20);
            seen.extend(pic.acknowledge());
            seen.push(pic.read(MASTER_CMD));
            runs.push(seen);
        }
        assert_eq!(runs[0], [1 << 4, 0x39, 0x3a, 0]);
        assert_eq!(runs[0], runs[1]);
        assert_eq!(restored, original);
    }

    #[test]
    fn impossible_pic_state_is_refused_and_changes_nothing() {
        let mem = memory();
        let mut bad = busy_pic().save();
        bad.master.elcr = 0x01; // IRQ 0 is always edge-triggered
        let mut pic = Pic::new();
        assert!(matches!(
            pic.restore(&bad, &mem),
            Err(SnapshotError::Invalid(_))
        ));
        let mut bad = busy_pic().save();
        bad.slave.highest_priority = 8;
        assert!(pic.restore(&bad, &mem).is_err());
        assert_eq!(pic, Pic::new());
    }
}

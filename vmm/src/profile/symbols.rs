//! Guest kernel function names from the `System.map` kept beside the cached `vmlinux`.

use std::path::Path;

/// The `System.map` beside the kernel image `kernel`.
pub(super) fn map_beside(kernel: &Path) -> std::path::PathBuf {
    kernel.with_file_name("System.map")
}

/// A `System.map`'s entries: address, kind (`T`, `d`, ...) and name; malformed lines are skipped.
pub(super) fn map_entries(text: &str) -> impl Iterator<Item = (u64, &str, &str)> {
    text.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        let addr = u64::from_str_radix(words.next()?, 16).ok()?;
        Some((addr, words.next()?, words.next()?))
    })
}

/// Kernel function names from a `System.map`.
#[derive(Debug, Default)]
pub struct Symbols {
    /// Text symbols by address, sorted.
    text: Vec<(u64, String)>,
}

impl Symbols {
    /// Reads the `System.map` beside `kernel`; none (every address unnamed) if there is none.
    pub fn beside(kernel: &Path) -> Self {
        std::fs::read_to_string(map_beside(kernel))
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    pub fn parse(text: &str) -> Self {
        let mut text_symbols: Vec<(u64, String)> = map_entries(text)
            .filter(|(_, kind, _)| matches!(*kind, "T" | "t" | "W" | "w"))
            .map(|(addr, _, name)| (addr, name.to_string()))
            .collect();
        text_symbols.sort();
        Self { text: text_symbols }
    }

    /// Whether the map had no functions (or there was no map).
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Whether the kernel has a function called `name`.
    pub fn has_function(&self, name: &str) -> bool {
        self.text.iter().any(|(_, n)| n == name)
    }

    /// Where the function called `name` starts.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.text
            .iter()
            .find(|(_, n)| n == name)
            .map(|&(addr, _)| addr)
    }

    /// The functions, by address.
    pub(super) fn functions(&self) -> impl Iterator<Item = (u64, &str)> {
        self.text.iter().map(|(addr, name)| (*addr, name.as_str()))
    }

    /// Where the function containing `rip` starts.
    pub(super) fn start_of(&self, rip: u64) -> Option<u64> {
        self.containing(rip).map(|&(start, _)| start)
    }

    /// The start address and name of the function containing `rip`.
    fn containing(&self, rip: u64) -> Option<&(u64, String)> {
        let at = self.text.partition_point(|(addr, _)| *addr <= rip);
        at.checked_sub(1).map(|i| &self.text[i])
    }

    /// `function+0xOFFSET` of `rip`, or its address.
    pub fn name_and_offset(&self, rip: u64) -> String {
        match self.containing(rip) {
            Some((start, name)) => format!("{name}+{:#x}", rip - start),
            None => format!("{rip:#x}"),
        }
    }

    /// The function containing `rip`, or its address.
    pub fn name(&self, rip: u64) -> String {
        match self.containing(rip) {
            Some((_, name)) => name.clone(),
            None => format!("{rip:#x}"),
        }
    }
}

/// The address to look up for the frame at `depth` of a kernel stack (innermost 0). A return
/// address names its caller (the call instruction precedes it), so it is looked up one byte
/// back.
pub(super) fn frame_address(depth: usize, addr: u64) -> u64 {
    if depth == 0 {
        addr
    } else {
        addr.saturating_sub(1)
    }
}

/// The function names of a kernel stack, innermost first.
pub(super) fn frame_names(symbols: &Symbols, frames: &[u64]) -> Vec<String> {
    frames
        .iter()
        .enumerate()
        .map(|(depth, &addr)| symbols.name(frame_address(depth, addr)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_name_the_function_containing_an_address() {
        let symbols = Symbols::parse(
            "ffffffff81000000 T _stext\nffffffff81000100 t do_one\nffffffff81000200 D data\n\
             ffffffff81000300 T do_two\n",
        );
        assert_eq!(symbols.name(0xffff_ffff_8100_0150), "do_one");
        assert_eq!(symbols.name(0xffff_ffff_8100_0250), "do_one");
        assert_eq!(symbols.name(0xffff_ffff_8100_0300), "do_two");
        assert_eq!(symbols.name(0x1000), "0x1000");
    }
}

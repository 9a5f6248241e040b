//! A pcapng writer for the switch's frames, readable by Wireshark and tshark.
//!
//! One section; one Ethernet interface per machine (named `m1`, `m2`, ...) with nanosecond
//! timestamps (`if_tsresol` = 9), so a frame's timestamp is its virtual time exactly. Each frame is
//! an Enhanced Packet Block with its direction in `epb_flags`; a dropped frame also carries a
//! comment naming the reason (`dropped: partitioned`), which Wireshark shows as `frame.comment`.

use std::io::{self, Write};

use super::switch::DropReason;
use super::MachineId;

const SHB: u32 = 0x0a0d_0d0a;
const IDB: u32 = 0x0000_0001;
const EPB: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const LINKTYPE_ETHERNET: u16 = 1;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;

/// Which way a frame crossed the machine's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Towards the machine (a delivery).
    Inbound,
    /// From the machine (a send).
    Outbound,
}

/// One captured frame.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    /// The machine whose port saw the frame.
    pub machine: MachineId,
    /// Virtual time in nanoseconds.
    pub timestamp_ns: u64,
    pub direction: Direction,
    /// Set when the frame was dropped instead of delivered.
    pub dropped: Option<DropReason>,
    pub data: &'a [u8],
}

/// Writes a pcapng stream to `W`.
#[derive(Debug)]
pub struct PcapngWriter<W: Write> {
    out: W,
    interfaces: u16,
}

impl<W: Write> PcapngWriter<W> {
    /// Starts a capture with one interface per machine, `m1` to `m{machines}`.
    pub fn new(mut out: W, machines: u16) -> io::Result<Self> {
        let mut options = Options::default();
        options.string(SHB_USERAPPL, concat!("simvm ", env!("CARGO_PKG_VERSION")));
        let mut body = Vec::new();
        body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes()); // major version
        body.extend_from_slice(&0u16.to_le_bytes()); // minor version
        body.extend_from_slice(&(-1i64).to_le_bytes()); // section length: unknown
        write_block(&mut out, SHB, &body, options)?;
        for m in 0..machines {
            let mut options = Options::default();
            options.string(IF_NAME, &MachineId(m).to_string());
            options.bytes(IF_TSRESOL, &[9]);
            let mut body = Vec::new();
            body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
            body.extend_from_slice(&0u16.to_le_bytes()); // reserved
            body.extend_from_slice(&0u32.to_le_bytes()); // snaplen: unlimited
            write_block(&mut out, IDB, &body, options)?;
        }
        Ok(Self {
            out,
            interfaces: machines,
        })
    }

    /// Appends one frame.
    pub fn write_packet(&mut self, packet: &Packet<'_>) -> io::Result<()> {
        if packet.machine.0 >= self.interfaces {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no capture interface for machine {}", packet.machine),
            ));
        }
        let len = u32::try_from(packet.data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
        let mut options = Options::default();
        if let Some(reason) = packet.dropped {
            options.string(OPT_COMMENT, &format!("dropped: {reason}"));
        }
        let direction: u32 = match packet.direction {
            Direction::Inbound => 1,
            Direction::Outbound => 2,
        };
        options.bytes(EPB_FLAGS, &direction.to_le_bytes());
        let mut body = Vec::with_capacity(20 + packet.data.len() + 3);
        body.extend_from_slice(&u32::from(packet.machine.0).to_le_bytes());
        // High word first, each little-endian.
        let timestamp = packet.timestamp_ns.to_le_bytes();
        body.extend_from_slice(&timestamp[4..]);
        body.extend_from_slice(&timestamp[..4]);
        body.extend_from_slice(&len.to_le_bytes()); // captured
        body.extend_from_slice(&len.to_le_bytes()); // original
        body.extend_from_slice(packet.data);
        pad(&mut body);
        write_block(&mut self.out, EPB, &body, options)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// An option list being built; `finish` appends `opt_endofopt`.
#[derive(Default)]
struct Options(Vec<u8>);

impl Options {
    fn bytes(&mut self, code: u16, value: &[u8]) {
        // Option values are at most 65535 bytes; ours are short strings and integers.
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        let value = &value[..usize::from(len)];
        self.0.extend_from_slice(&code.to_le_bytes());
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(value);
        pad(&mut self.0);
    }

    fn string(&mut self, code: u16, value: &str) {
        self.bytes(code, value.as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        if !self.0.is_empty() {
            self.0.extend_from_slice(&OPT_END.to_le_bytes());
            self.0.extend_from_slice(&0u16.to_le_bytes());
        }
        self.0
    }
}

/// Pads to a multiple of four bytes, as every pcapng field must be.
fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn write_block(out: &mut impl Write, kind: u32, body: &[u8], options: Options) -> io::Result<()> {
    let options = options.finish();
    let total = u32::try_from(12 + body.len() + options.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "block too large"))?;
    let mut block = Vec::with_capacity(total as usize);
    block.extend_from_slice(&kind.to_le_bytes());
    block.extend_from_slice(&total.to_le_bytes());
    block.extend_from_slice(body);
    block.extend_from_slice(&options);
    block.extend_from_slice(&total.to_le_bytes());
    out.write_all(&block)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed block: type and body (between the length fields).
    fn blocks(mut bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let kind = u32_at(bytes, 0);
            let total = u32_at(bytes, 4) as usize;
            assert_eq!(total % 4, 0, "block length {total} not padded");
            assert_eq!(u32_at(bytes, total - 4) as usize, total, "trailing length");
            out.push((kind, bytes[8..total - 4].to_vec()));
            bytes = &bytes[total..];
        }
        out
    }

    /// Options as (code, value) up to opt_endofopt, which must be present.
    fn options(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let code = u16::from_le_bytes([bytes[0], bytes[1]]);
            let len = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
            if code == OPT_END {
                assert_eq!((len, bytes.len()), (0, 4), "end of options");
                return out;
            }
            out.push((code, bytes[4..4 + len].to_vec()));
            bytes = &bytes[4 + len.next_multiple_of(4)..];
        }
    }

    /// An Ethernet/IPv4/TCP SYN from 10.0.0.`from` to 10.0.0.`to`, port 80.
    fn tcp_syn(from: u8, to: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MachineId(u16::from(to) - 1).mac().0);
        f.extend_from_slice(&MachineId(u16::from(from) - 1).mac().0);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
        ip.extend_from_slice(&[10, 0, 0, from, 10, 0, 0, to]);
        let sum = !crate::net::checksum::fold_sum(&ip, 0);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut tcp = vec![
            0xc0, 0x00, 0x00, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
        ];
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&tcp);
        f
    }

    fn capture() -> (Vec<u8>, Vec<Vec<u8>>) {
        let frames = vec![tcp_syn(2, 1), tcp_syn(2, 1), tcp_syn(3, 1)[..51].to_vec()];
        let mut w = PcapngWriter::new(Vec::new(), 3).unwrap();
        let packets = [
            (
                MachineId(1),
                5_000_000_123,
                Direction::Outbound,
                None,
                &frames[0],
            ),
            (
                MachineId(0),
                5_000_050_123,
                Direction::Inbound,
                None,
                &frames[1],
            ),
            (
                MachineId(0),
                (7 << 32) + 9,
                Direction::Inbound,
                Some(DropReason::Partition),
                &frames[2],
            ),
        ];
        for (machine, timestamp_ns, direction, dropped, data) in packets {
            w.write_packet(&Packet {
                machine,
                timestamp_ns,
                direction,
                dropped,
                data,
            })
            .unwrap();
        }
        let err = w.write_packet(&Packet {
            machine: MachineId(3),
            timestamp_ns: 0,
            direction: Direction::Inbound,
            dropped: None,
            data: &frames[0],
        });
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        (w.into_inner(), frames)
    }

    #[test]
    fn blocks_parse_back() {
        let (bytes, frames) = capture();
        let blocks = blocks(&bytes);
        let kinds: Vec<u32> = blocks.iter().map(|b| b.0).collect();
        assert_eq!(kinds, [SHB, IDB, IDB, IDB, EPB, EPB, EPB]);

        let shb = &blocks[0].1;
        assert_eq!(&shb[..4], &BYTE_ORDER_MAGIC.to_le_bytes());
        assert_eq!(&shb[4..8], &[1, 0, 0, 0]);
        assert!(options(&shb[16..])[0].1.starts_with(b"simvm "));

        for (i, (_, idb)) in blocks[1..4].iter().enumerate() {
            assert_eq!(&idb[..2], &LINKTYPE_ETHERNET.to_le_bytes());
            let opts = options(&idb[8..]);
            assert_eq!(
                opts,
                [
                    (IF_NAME, format!("m{}", i + 1).into_bytes()),
                    (IF_TSRESOL, vec![9])
                ]
            );
        }

        let expected = [
            (1u32, 5_000_000_123u64, 2u32, None),
            (0, 5_000_050_123, 1, None),
            (0, (7 << 32) + 9, 1, Some(&b"dropped: partitioned"[..])),
        ];
        for (((_, epb), frame), (iface, ts, flags, comment)) in
            blocks[4..].iter().zip(&frames).zip(expected)
        {
            let word = |i: usize| u32::from_le_bytes(epb[i..i + 4].try_into().unwrap());
            assert_eq!(word(0), iface);
            assert_eq!(u64::from(word(4)) << 32 | u64::from(word(8)), ts);
            assert_eq!(word(12) as usize, frame.len());
            assert_eq!(word(16) as usize, frame.len());
            assert_eq!(&epb[20..20 + frame.len()], &frame[..]);
            let opts = options(&epb[20 + frame.len().next_multiple_of(4)..]);
            let mut want = Vec::new();
            if let Some(c) = comment {
                want.push((OPT_COMMENT, c.to_vec()));
            }
            want.push((EPB_FLAGS, flags.to_le_bytes().to_vec()));
            assert_eq!(opts, want);
        }
    }

    /// Cross-checks the file with tshark when it is installed.
    #[test]
    fn tshark_reads_the_capture() {
        let Ok(version) = std::process::Command::new("tshark")
            .arg("--version")
            .output()
        else {
            eprintln!("tshark not installed; blocks_parse_back covers the format");
            return;
        };
        assert!(version.status.success());
        let (bytes, _) = capture();
        let path = std::env::temp_dir().join(format!("simvm-pcapng-{}.pcapng", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let out = std::process::Command::new("tshark")
            .arg("-r")
            .arg(&path)
            .args(["-T", "fields", "-E", "separator=|"])
            .args(["-e", "frame.interface_name", "-e", "frame.time_epoch"])
            .args(["-e", "ip.src", "-e", "ip.dst", "-e", "tcp.flags.syn"])
            .args(["-e", "frame.comment", "-e", "frame.packet_flags_direction"])
            .output()
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "tshark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Versions print the direction flags in hex or decimal; 1 and 2 read the same in both.
        let lines: Vec<String> = stdout
            .lines()
            .map(|l| {
                let (rest, dir) = l.rsplit_once('|').unwrap_or((l, ""));
                let dir = u32::from_str_radix(dir.trim_start_matches("0x"), 16);
                format!("{rest}|{}", dir.map_or("?".into(), |d| d.to_string()))
            })
            .collect();
        assert_eq!(
            lines,
            [
                "m2|5.000000123|10.0.0.2|10.0.0.1|1||2",
                "m1|5.000050123|10.0.0.2|10.0.0.1|1||1",
                "m1|30.064771081|10.0.0.3|10.0.0.1|1|dropped: partitioned|1",
            ],
            "{stdout}"
        );
    }
}

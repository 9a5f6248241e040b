//! Fuzz target of TCP segmentation offload: frames with guest-chosen headers, payload lengths and
//! segment sizes. Whatever comes out must be what a wire can carry: at most [`MAX_SEGMENTS`]
//! segments, each a valid IPv4 packet with correct lengths and checksums, together carrying the
//! payload exactly once.

use proptest::prelude::*;

use super::*;
use crate::fuzz::{self, Tally};

#[derive(Clone, Debug)]
struct Case {
    ethertype: u16,
    /// First IPv4 byte: version and header length in words.
    version_ihl: u8,
    protocol: u8,
    /// TCP data offset in words.
    doff: u8,
    flags: u8,
    id: u16,
    seq: u32,
    payload_len: usize,
    fill: u8,
    /// Cut the frame to this length, if shorter.
    truncate: usize,
    mss: u16,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![8 => Just(ETHERTYPE_IPV4), 1 => any::<u16>()],
        prop_oneof![4 => Just(0x45u8), 2 => 0x45u8..=0x4f, 1 => any::<u8>()],
        prop_oneof![8 => Just(PROTO_TCP), 1 => any::<u8>()],
        prop_oneof![4 => Just(5u8), 4 => Just(8u8), 2 => 0..16u8],
        any::<u8>(),
        any::<u16>(),
        any::<u32>(),
        prop_oneof![
            6 => 0..=3000usize,
            2 => 0..=MAX_PAYLOAD + 64,
            2 => (MAX_PAYLOAD - 128)..=(MAX_PAYLOAD + 8),
        ],
        any::<u8>(),
        prop_oneof![8 => Just(usize::MAX), 1 => 0..=140usize],
        prop_oneof![
            4 => prop::sample::select(vec![0u16, 1, 87, 88, 89, 536, 1448, 1460, 9000, 65_483]),
            2 => MIN_MSS..=2000,
            1 => 65_400..=u16::MAX,
            1 => any::<u16>(),
        ],
    )
        .prop_map(
            |(
                ethertype,
                version_ihl,
                protocol,
                doff,
                flags,
                id,
                seq,
                payload_len,
                fill,
                truncate,
                mss,
            )| {
                Case {
                    ethertype,
                    version_ihl,
                    protocol,
                    doff,
                    flags,
                    id,
                    seq,
                    payload_len,
                    fill,
                    truncate,
                    mss,
                }
            },
        )
}

/// What `segment_tcp4` must answer, from the header rules alone.
fn expected_error(case: &Case, frame: &[u8]) -> Option<TsoError> {
    let bad = Some(TsoError::BadHeaders(frame.len()));
    let ip_len = usize::from(case.version_ihl & 0x0f) * 4;
    let tcp = 14 + ip_len;
    let tcp_len = usize::from(case.doff) * 4;
    if case.mss == 0 {
        Some(TsoError::ZeroMss)
    } else if case.mss < MIN_MSS {
        Some(TsoError::MssTooSmall(case.mss))
    } else if frame.len() < 14 {
        bad
    } else if case.ethertype != ETHERTYPE_IPV4 {
        Some(TsoError::NotIpv4(case.ethertype))
    } else if frame.len() < 15 || case.version_ihl >> 4 != 4 || ip_len < 20 || frame.len() < 24 {
        bad
    } else if case.protocol != PROTO_TCP {
        Some(TsoError::NotTcp(case.protocol))
    } else if frame.len() <= tcp + 12 || tcp_len < 20 || tcp + tcp_len > frame.len() {
        bad
    } else if ip_len + tcp_len + usize::from(case.mss) > 65_535 {
        Some(TsoError::MssTooLarge {
            mss: case.mss,
            headers: ip_len + tcp_len,
        })
    } else if frame.len() - tcp - tcp_len > MAX_PAYLOAD {
        Some(TsoError::PayloadTooLarge(frame.len() - tcp - tcp_len))
    } else {
        None
    }
}

fn check(case: Case, tally: &mut Tally) {
    // Room for every field read, even where the declared lengths are too short (such frames
    // are refused before the layout matters).
    let ip_area = (usize::from(case.version_ihl & 0x0f) * 4).max(20);
    let tcp = 14 + ip_area;
    let tcp_area = (usize::from(case.doff) * 4).max(20);
    let mut frame = vec![0u8; tcp + tcp_area];
    frame[12..14].copy_from_slice(&case.ethertype.to_be_bytes());
    frame[14] = case.version_ihl;
    frame[14 + 4..14 + 6].copy_from_slice(&case.id.to_be_bytes());
    frame[14 + 8] = 64;
    frame[14 + 9] = case.protocol;
    frame[14 + 12..14 + 20].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    frame[tcp + 4..tcp + 8].copy_from_slice(&case.seq.to_be_bytes());
    frame[tcp + 12] = case.doff << 4;
    frame[tcp + 13] = case.flags;
    frame.extend((0..case.payload_len).map(|i| case.fill.wrapping_add(i as u8)));
    frame.truncate(case.truncate);

    let result = segment_tcp4(&frame, case.mss);
    match (expected_error(&case, &frame), result) {
        (Some(expected), Err(got)) => {
            assert_eq!(got, expected);
            tally.hit(match got {
                TsoError::NotIpv4(_) => "not_ipv4",
                TsoError::NotTcp(_) => "not_tcp",
                TsoError::BadHeaders(_) => "bad_headers",
                TsoError::ZeroMss => "zero_mss",
                TsoError::MssTooSmall(_) => "mss_too_small",
                TsoError::MssTooLarge { .. } => "mss_too_large",
                TsoError::PayloadTooLarge(_) => "payload_too_large",
            });
        }
        (None, Ok(segments)) => {
            check_segments(&case, &frame, &segments);
            tally.hit(if segments.len() > 1 {
                "segmented"
            } else {
                "one_segment"
            });
        }
        (expected, got) => panic!("expected {expected:?}, got {got:?}"),
    }
}

fn check_segments(case: &Case, frame: &[u8], segments: &[Vec<u8>]) {
    let ip_len = usize::from(case.version_ihl & 0x0f) * 4;
    let headers = 14 + ip_len + usize::from(case.doff) * 4;
    let tcp = 14 + ip_len;
    let payload = &frame[headers..];
    let mss = usize::from(case.mss);
    assert_eq!(segments.len(), payload.len().div_ceil(mss).max(1));
    assert!(segments.len() <= MAX_SEGMENTS);
    let mut rebuilt = Vec::with_capacity(payload.len());
    for (i, seg) in segments.iter().enumerate() {
        assert!(seg.len() >= headers && seg.len() - 14 <= 65_535);
        assert!(seg.len() - headers <= mss);
        let total = u16::from_be_bytes([seg[16], seg[17]]);
        assert_eq!(usize::from(total), seg.len() - 14);
        let id = u16::from_be_bytes([seg[18], seg[19]]);
        assert_eq!(id, case.id.wrapping_add(i as u16));
        let seq = u32::from_be_bytes(seg[tcp + 4..tcp + 8].try_into().unwrap());
        assert_eq!(seq, case.seq.wrapping_add((i * mss) as u32));
        let last = i + 1 == segments.len();
        let mut flags = case.flags;
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        assert_eq!(seg[tcp + 13], flags);
        // Only lengths, ID, checksums and sequence number change in the headers.
        for (at, (&a, &b)) in seg[..headers].iter().zip(&frame[..headers]).enumerate() {
            let changed = (16..20).contains(&at)
                || (24..26).contains(&at)
                || (tcp + 4..tcp + 8).contains(&at)
                || at == tcp + 13
                || (tcp + 16..tcp + 18).contains(&at);
            assert!(changed || a == b, "header byte {at}");
        }
        assert_eq!(fold_sum(&seg[14..tcp], 0), 0xffff, "IP checksum");
        let tcp_total = u16::try_from(seg.len() - tcp).unwrap();
        let pseudo = pseudo_header_sum(&seg[14..tcp], tcp_total);
        assert_eq!(fold_sum(&seg[tcp..], pseudo), 0xffff, "TCP checksum");
        rebuilt.extend_from_slice(&seg[headers..]);
    }
    assert_eq!(rebuilt, payload);
}

#[test]
fn fuzz_tso() {
    let expected = [
        "one_segment",
        "segmented",
        "not_ipv4",
        "not_tcp",
        "bad_headers",
        "zero_mss",
        "mss_too_small",
        "mss_too_large",
        "payload_too_large",
    ];
    fuzz::run("tso", 1500, case(), &expected, check);
}

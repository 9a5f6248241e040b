//! TCP segmentation offload for IPv4: cutting one large TCP frame from a guest into the
//! MSS-sized frames a real NIC would put on the wire.
//!
//! With `HOST_TSO4` a guest's TCP stack hands the device up to 64 KiB of payload behind one set
//! of headers, so the guest kernel (whose ring 0 is emulated on PVM hosts) runs once per 64 KiB
//! instead of once per segment. The switch, the capture and the receiving guest still see
//! ordinary segments, each with correct lengths, IP ID, sequence number, flags and checksums, so
//! links apply their delay, loss and bandwidth per segment exactly as for any other frame.

use thiserror::Error;

use super::checksum::fold_sum;
use super::ETH_HEADER_LEN;

const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Smallest segment size accepted: Linux's `TCP_MIN_MSS`, the least a socket can be set to
/// (`TCP_MAXSEG`). Between simvm's Linux guests the MSS comes from the 1500-byte MTU; a
/// smaller one takes a peer advertising a tiny MSS (a crafted SYN or an MTU under 128), and
/// without this floor an MSS of 1 would cut one frame into 65,000.
pub const MIN_MSS: u16 = 88;
/// Largest TCP payload of one frame to segment: Linux's legacy `GSO_MAX_SIZE` (virtio-net never
/// carries more in one frame anyway).
pub const MAX_PAYLOAD: usize = 65_536;
/// Most segments one frame can become: [`MAX_PAYLOAD`] in [`MIN_MSS`]-byte pieces.
pub const MAX_SEGMENTS: usize = MAX_PAYLOAD.div_ceil(MIN_MSS as usize);
/// Largest IPv4 packet: the total length field is 16 bits.
const MAX_IPV4_LEN: usize = u16::MAX as usize;

/// Why a frame marked for segmentation cannot be segmented.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TsoError {
    #[error("segmentation asked for a frame that is not IPv4 (ethertype {0:#06x})")]
    NotIpv4(u16),
    #[error("segmentation asked for a frame that is not TCP (IP protocol {0})")]
    NotTcp(u8),
    #[error("IPv4 or TCP header truncated or malformed in a {0}-byte frame")]
    BadHeaders(usize),
    #[error("segment size 0")]
    ZeroMss,
    #[error("segment size {0} is below the minimum of {MIN_MSS}")]
    MssTooSmall(u16),
    #[error("segment size {mss} with {headers} header bytes exceeds the largest IPv4 packet")]
    MssTooLarge { mss: u16, headers: usize },
    #[error("TCP payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit of one frame")]
    PayloadTooLarge(usize),
}

/// Cuts `frame` (Ethernet + IPv4 + TCP + payload, checksums not yet valid) into frames of at
/// most `mss` payload bytes each, with every header field and checksum completed. At most
/// [`MAX_SEGMENTS`] come out; an MSS or payload outside what Linux sends is an error.
pub fn segment_tcp4(frame: &[u8], mss: u16) -> Result<Vec<Vec<u8>>, TsoError> {
    match mss {
        0 => return Err(TsoError::ZeroMss),
        mss if mss < MIN_MSS => return Err(TsoError::MssTooSmall(mss)),
        _ => {}
    }
    let bad = || TsoError::BadHeaders(frame.len());
    let ethertype = match frame.get(12..ETH_HEADER_LEN) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => return Err(bad()),
    };
    if ethertype != ETHERTYPE_IPV4 {
        return Err(TsoError::NotIpv4(ethertype));
    }
    let ip = ETH_HEADER_LEN;
    let ip_first = *frame.get(ip).ok_or_else(bad)?;
    // Header lengths are at most 60 bytes each: 4-bit fields counting 32-bit words.
    let ip_len = u16::from(ip_first & 0x0f) * 4;
    if ip_first >> 4 != 4 || ip_len < 20 {
        return Err(bad());
    }
    let tcp = ip + usize::from(ip_len);
    let protocol = *frame.get(ip + 9).ok_or_else(bad)?;
    if protocol != PROTO_TCP {
        return Err(TsoError::NotTcp(protocol));
    }
    let tcp_len = u16::from(*frame.get(tcp + 12).ok_or_else(bad)? >> 4) * 4;
    let headers = tcp + usize::from(tcp_len);
    if tcp_len < 20 || headers > frame.len() {
        return Err(bad());
    }
    // Every segment's IPv4 total length must fit its 16-bit field.
    let too_large = || TsoError::MssTooLarge {
        mss,
        headers: usize::from(ip_len + tcp_len),
    };
    if usize::from(ip_len + tcp_len) + usize::from(mss) > MAX_IPV4_LEN {
        return Err(too_large());
    }
    let payload = &frame[headers..];
    if payload.len() > MAX_PAYLOAD {
        return Err(TsoError::PayloadTooLarge(payload.len()));
    }

    let mut id = u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]);
    let mut seq = u32::from_be_bytes([
        frame[tcp + 4],
        frame[tcp + 5],
        frame[tcp + 6],
        frame[tcp + 7],
    ]);
    let flags = frame[tcp + 13];
    let count = payload.len().div_ceil(usize::from(mss)).max(1);
    debug_assert!(count <= MAX_SEGMENTS);
    let mut segments = Vec::with_capacity(count);
    for (i, chunk) in payload
        .chunks(usize::from(mss))
        .chain(payload.is_empty().then_some(&[][..]))
        .enumerate()
    {
        // A chunk holds at most `mss` bytes, so these fit (checked above); no wrapping cast.
        let chunk_len = u16::try_from(chunk.len()).map_err(|_| too_large())?;
        let tcp_total = tcp_len.checked_add(chunk_len).ok_or_else(too_large)?;
        let total = ip_len.checked_add(tcp_total).ok_or_else(too_large)?;
        let mut seg = Vec::with_capacity(headers + chunk.len());
        seg.extend_from_slice(&frame[..headers]);
        seg.extend_from_slice(chunk);
        seg[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        seg[ip + 4..ip + 6].copy_from_slice(&id.to_be_bytes());
        seg[ip + 10..ip + 12].fill(0);
        let ip_sum = !fold_sum(&seg[ip..tcp], 0);
        seg[ip + 10..ip + 12].copy_from_slice(&ip_sum.to_be_bytes());

        seg[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
        let last = i + 1 == count;
        let mut seg_flags = flags;
        if !last {
            seg_flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            seg_flags &= !TCP_CWR;
        }
        seg[tcp + 13] = seg_flags;
        seg[tcp + 16..tcp + 18].fill(0);
        let tcp_sum = !fold_sum(&seg[tcp..], pseudo_header_sum(&seg[ip..tcp], tcp_total));
        seg[tcp + 16..tcp + 18].copy_from_slice(&tcp_sum.to_be_bytes());
        segments.push(seg);
        // IP IDs and sequence numbers wrap by design.
        id = id.wrapping_add(1);
        seq = seq.wrapping_add(u32::from(chunk_len));
    }
    Ok(segments)
}

/// The IPv4 pseudo-header's contribution to a TCP checksum.
fn pseudo_header_sum(ip_header: &[u8], tcp_len: u16) -> u32 {
    let addresses = fold_sum(&ip_header[12..20], 0);
    u32::from(addresses) + u32::from(PROTO_TCP) + u32::from(tcp_len)
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod fuzz;

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet/IPv4/TCP frame with `payload`, checksums left zero as a TSO guest hands it.
    pub(crate) fn gso_frame(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 32];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[14 + 4..14 + 6].copy_from_slice(&0x1234u16.to_be_bytes());
        f[14 + 8] = 64;
        f[14 + 9] = PROTO_TCP;
        f[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
        let t = 34;
        f[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        f[t + 2..t + 4].copy_from_slice(&80u16.to_be_bytes());
        f[t + 4..t + 8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        f[t + 12] = 8 << 4; // 32-byte header: timestamps option space
        f[t + 13] = flags;
        f.extend_from_slice(payload);
        f
    }

    pub(crate) fn valid_ip_checksum(seg: &[u8]) -> bool {
        fold_sum(&seg[14..34], 0) == 0xffff
    }

    pub(crate) fn valid_tcp_checksum(seg: &[u8]) -> bool {
        let Ok(tcp_len) = u16::try_from(seg.len() - 34) else {
            return false;
        };
        fold_sum(&seg[34..], pseudo_header_sum(&seg[14..34], tcp_len)) == 0xffff
    }

    #[test]
    fn cuts_payload_into_mss_segments_with_every_field_completed() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let ack_psh_fin_cwr = 0x10 | TCP_PSH | TCP_FIN | TCP_CWR;
        let segs = segment_tcp4(&gso_frame(&payload, ack_psh_fin_cwr), 1448).unwrap();
        assert_eq!(segs.len(), 3);
        let mut rebuilt = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let chunk = &seg[66..];
            assert_eq!(chunk.len(), [1448, 1448, 104][i]);
            rebuilt.extend_from_slice(chunk);
            let total = u16::from_be_bytes([seg[16], seg[17]]);
            assert_eq!(usize::from(total), seg.len() - 14);
            assert_eq!(u16::from_be_bytes([seg[18], seg[19]]), 0x1234 + i as u16);
            let seq = u32::from_be_bytes([seg[38], seg[39], seg[40], seg[41]]);
            // The sequence number wraps past 2^32 in the second segment.
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add(1448 * i as u32));
            let flags = seg[47];
            assert_eq!(flags & 0x10, 0x10, "ACK kept on every segment");
            assert_eq!(
                flags & (TCP_FIN | TCP_PSH) != 0,
                i == 2,
                "FIN/PSH only last"
            );
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only first");
            assert!(valid_ip_checksum(seg), "IP checksum of segment {i}");
            assert!(valid_tcp_checksum(seg), "TCP checksum of segment {i}");
        }
        assert_eq!(rebuilt, payload);
    }

    #[test]
    fn a_payload_within_one_mss_or_empty_gives_one_segment() {
        for payload in [&[7u8; 100][..], &[]] {
            let segs = segment_tcp4(&gso_frame(payload, 0x10), 1448).unwrap();
            assert_eq!(segs.len(), 1);
            assert!(valid_ip_checksum(&segs[0]) && valid_tcp_checksum(&segs[0]));
        }
    }

    /// An MSS of 1 used to turn one 64 KiB frame into ~65,000 frames.
    #[test]
    fn a_tiny_mss_is_refused_instead_of_cut_into_thousands_of_segments() {
        let frame = gso_frame(&vec![0; 60_000], 0x10);
        for mss in [1, 87] {
            assert_eq!(segment_tcp4(&frame, mss), Err(TsoError::MssTooSmall(mss)));
        }
        assert_eq!(segment_tcp4(&frame, MIN_MSS).unwrap().len(), 682);
        // The bound holds for the largest payload too.
        let most = segment_tcp4(&gso_frame(&vec![0; MAX_PAYLOAD], 0x10), MIN_MSS).unwrap();
        assert_eq!(most.len(), MAX_SEGMENTS);
        assert_eq!(
            segment_tcp4(&gso_frame(&vec![0; MAX_PAYLOAD + 1], 0x10), 1448),
            Err(TsoError::PayloadTooLarge(MAX_PAYLOAD + 1))
        );
    }

    /// 52 header bytes and 65,484 payload bytes make an IPv4 total length of 65,536, which used
    /// to be written as 0.
    #[test]
    fn a_segment_too_long_for_ipv4_is_refused_not_truncated() {
        let frame = gso_frame(&vec![7; 65_484], 0x10);
        for mss in [65_484, 65_535] {
            assert_eq!(
                segment_tcp4(&frame, mss),
                Err(TsoError::MssTooLarge { mss, headers: 52 })
            );
        }
        let frame = gso_frame(&vec![7; 65_483], 0x10);
        let segs = segment_tcp4(&frame, 65_483).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(u16::from_be_bytes([segs[0][16], segs[0][17]]), 65_535);
        assert!(valid_ip_checksum(&segs[0]) && valid_tcp_checksum(&segs[0]));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let good = gso_frame(&[1; 10], 0x10);
        assert_eq!(segment_tcp4(&good, 0), Err(TsoError::ZeroMss));
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(segment_tcp4(&arp, 100), Err(TsoError::NotIpv4(0x0806)));
        let mut udp = good.clone();
        udp[23] = 17;
        assert_eq!(segment_tcp4(&udp, 100), Err(TsoError::NotTcp(17)));
        let mut short_ihl = good.clone();
        short_ihl[14] = 0x44;
        assert!(matches!(
            segment_tcp4(&short_ihl, 100),
            Err(TsoError::BadHeaders(_))
        ));
        let mut huge_doff = good.clone();
        huge_doff[46] = 0xf0;
        huge_doff.truncate(14 + 20 + 40);
        assert!(matches!(
            segment_tcp4(&huge_doff, 100),
            Err(TsoError::BadHeaders(_))
        ));
        for len in [0, 5, 13, 14, 20, 34, 40, 53] {
            assert!(segment_tcp4(&good[..len], 100).is_err(), "{len}-byte frame");
        }
    }
}

//! Internet checksums (RFC 1071), for completing partial checksums handed over by a guest.

use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("checksum field at {start}+{offset} lies outside the {len}-byte frame")]
pub struct PartialChecksumError {
    pub start: usize,
    pub offset: usize,
    pub len: usize,
}

/// One's complement sum of `data` as big-endian 16-bit words, added to `initial`, folded to
/// 16 bits.
pub fn fold_sum(data: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial);
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Folded: the low two bytes are the whole sum.
    let [low, high, ..] = sum.to_le_bytes();
    u16::from_le_bytes([low, high])
}

/// Where a UDP header keeps its checksum, as `csum_offset` gives it: the transport to which a
/// zero checksum means "none".
const UDP_CHECKSUM_OFFSET: usize = 6;

/// Completes a checksum the guest left partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the checksum
/// over `frame[start..]` is stored at `frame[start + offset..]`. The guest has already put the
/// pseudo-header sum in that field, so summing over it yields the full transport checksum.
pub fn complete_partial(
    frame: &mut [u8],
    start: usize,
    offset: usize,
) -> Result<(), PartialChecksumError> {
    let err = || PartialChecksumError {
        start,
        offset,
        len: frame.len(),
    };
    let at = start.checked_add(offset).ok_or_else(err)?;
    if at
        .checked_add(2)
        .filter(|&end| end <= frame.len())
        .is_none()
    {
        return Err(err());
    }
    let sum = !fold_sum(&frame[start..], 0);
    // UDP sends a zero result as 0xffff (RFC 768: 0 means "no checksum"); TCP sends the zero it
    // computed, as a NIC and the segmentation offload do. A receiver takes either, but 0xffff
    // in a TCP header is not what a sender computes, and capture tools flag it.
    let sum = if sum == 0 && offset == UDP_CHECKSUM_OFFSET {
        0xffff
    } else {
        sum
    };
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame whose checksum field holds the folded pseudo-header sum,
    /// as Linux leaves it for offload. Returns the frame and the UDP header offset.
    pub(crate) fn partial_udp_frame(payload: &[u8]) -> (Vec<u8>, usize) {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(28 + payload.len() as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let udp_len = 8 + payload.len() as u16;
        f[34..36].copy_from_slice(&1234u16.to_be_bytes());
        f[36..38].copy_from_slice(&5678u16.to_be_bytes());
        f[38..40].copy_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(payload);
        let pseudo = pseudo_sum(&f);
        f[40..42].copy_from_slice(&pseudo.to_be_bytes());
        (f, 34)
    }

    fn pseudo_sum(f: &[u8]) -> u16 {
        let mut p = Vec::new();
        p.extend_from_slice(&f[26..34]);
        p.extend_from_slice(&[0, 17]);
        p.extend_from_slice(&f[38..40]);
        fold_sum(&p, 0)
    }

    /// Verifies a UDP checksum the way a receiver does: pseudo-header plus segment sums to 0xffff.
    fn udp_checksum_ok(f: &[u8]) -> bool {
        fold_sum(&f[34..], u32::from(pseudo_sum(f))) == 0xffff
    }

    #[test]
    fn completes_a_partial_udp_checksum() {
        for payload in [&b"hello world"[..], b"odd", b"", &[0xff; 1000]] {
            let (mut f, udp) = partial_udp_frame(payload);
            assert!(!udp_checksum_ok(&f) || payload.is_empty());
            complete_partial(&mut f, udp, 6).unwrap();
            assert!(udp_checksum_ok(&f), "payload {payload:?}");
            assert_ne!(&f[40..42], &[0, 0]);
        }
    }

    #[test]
    fn a_zero_checksum_goes_out_as_0xffff_for_udp_and_as_zero_for_tcp() {
        for (offset, expected) in [(UDP_CHECKSUM_OFFSET, 0xffffu16), (16, 0)] {
            // Twenty bytes from the transport header on, the checksum field holding a partial
            // sum, and the first word chosen so that everything sums to 0xffff: a zero result.
            let mut f = vec![0u8; 20];
            f[offset..offset + 2].copy_from_slice(&0x1234u16.to_be_bytes());
            f[8..12].copy_from_slice(&[0xab, 0xcd, 0x00, 0x42]);
            let word = 0xffff - fold_sum(&f, 0);
            f[..2].copy_from_slice(&word.to_be_bytes());
            assert_eq!(fold_sum(&f, 0), 0xffff);
            complete_partial(&mut f, 0, offset).unwrap();
            assert_eq!(
                u16::from_be_bytes([f[offset], f[offset + 1]]),
                expected,
                "offset {offset}"
            );
        }
    }

    #[test]
    fn known_vector_from_rfc1071() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold_sum(&data, 0), 0xddf2);
    }

    #[test]
    fn field_outside_the_frame_is_an_error() {
        let mut f = vec![0u8; 40];
        assert!(complete_partial(&mut f, 34, 6).is_err());
        assert!(complete_partial(&mut f, 38, 1).is_err());
        assert!(complete_partial(&mut f, 37, 1).is_ok());
        assert!(complete_partial(&mut f, usize::MAX, 6).is_err());
        assert!(complete_partial(&mut f, 10, usize::MAX).is_err());
    }
}

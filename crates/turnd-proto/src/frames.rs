//! The data-path frames of RFC 8656 from either end: ChannelData (§12.4), Send and Data
//! indications (§11), and where a frame ends on a TCP/TLS stream (§12.5). These build and
//! read the bytes in place, without allocating, for a client (`turnctl`) as much as a server.
//! Control-plane messages are [`Parsed`](crate::engine::wire::Parsed) and built with the
//! `stun` crate.
//!
//! Every length here comes from the network or from the caller: indexing is denied, a buffer
//! too short for what is asked gives `None`.

#![deny(clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::ops::Range;

use stun::attributes::{ATTR_DATA, ATTR_XOR_PEER_ADDRESS};
use stun::message::{
    MessageType, Method, CLASS_INDICATION, MAGIC_COOKIE, MESSAGE_HEADER_SIZE, METHOD_DATA,
};

use crate::engine::wire::{be16, decode_xor_addr, encode_xor_addr};

/// Bytes before the payload of a ChannelData message (channel number and length).
pub const CHANNEL_DATA_HEADER: usize = 4;

/// A payload length padded to a multiple of 4 (attribute values; ChannelData on streams).
pub const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Length of the complete frame at the start of a stream buffer, from its first 4 bytes:
/// STUN is 20 + its length, ChannelData 4 + its length padded to 4 (streams pad it).
/// `Ok(None)` until 4 bytes are there; `Err(first byte)` when the bytes are neither (the
/// stream is out of sync). The frame may not be complete yet: compare with what is buffered.
pub fn stream_frame_len(head: &[u8]) -> Result<Option<usize>, u8> {
    let &[b0, _, l0, l1, ..] = head else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    match b0 >> 6 {
        0 => Ok(Some(MESSAGE_HEADER_SIZE + len)),
        1 => Ok(Some(CHANNEL_DATA_HEADER + padded(len))),
        _ => Err(b0),
    }
}

/// The channel number and the payload's range of a ChannelData message (first two bits 01:
/// numbers 0x4000..=0x7FFF); `None` for anything else or a length past the buffer.
pub fn channel_data(buf: &[u8]) -> Option<(u16, Range<usize>)> {
    let &[n0, n1, l0, l1, ..] = buf else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    let range = CHANNEL_DATA_HEADER..CHANNEL_DATA_HEADER + len;
    (n0 >> 6 == 1 && range.end <= buf.len()).then_some((u16::from_be_bytes([n0, n1]), range))
}

/// Write a ChannelData header for `len` payload bytes (the payload follows it in `buf`) and
/// zero the padding on a stream; returns the frame's length: padded on a stream, not on a
/// datagram transport. `None` when `buf` cannot hold it or `len` does not fit 16 bits.
pub fn write_channel_header(
    buf: &mut [u8],
    number: u16,
    len: usize,
    stream: bool,
) -> Option<usize> {
    let len16 = u16::try_from(len).ok()?;
    let total = CHANNEL_DATA_HEADER + if stream { padded(len) } else { len };
    let (head, rest) = buf.get_mut(..total)?.split_first_chunk_mut::<4>()?;
    let ([n0, n1], [l0, l1]) = (number.to_be_bytes(), len16.to_be_bytes());
    *head = [n0, n1, l0, l1];
    rest.get_mut(len..)?.fill(0);
    Some(total)
}

/// Length of a Send or Data indication's header for `peer`: the STUN header,
/// XOR-PEER-ADDRESS and the DATA attribute's header. The payload starts there.
pub fn indication_header_len(peer: &SocketAddr) -> usize {
    MESSAGE_HEADER_SIZE + 4 + xor_addr_len(peer) + 4
}

fn xor_addr_len(peer: &SocketAddr) -> usize {
    if peer.is_ipv4() {
        8
    } else {
        20
    }
}

/// Write the header of a `method` indication (`METHOD_SEND` or `METHOD_DATA`) carrying `len`
/// payload bytes to or from `peer`, and zero the payload's padding. The payload goes at
/// [`indication_header_len`]; `buf` holds header, payload and padding. Returns the message
/// length, or `None` when `buf` is too short or `len` too long for one message.
pub fn write_indication_header(
    buf: &mut [u8],
    method: Method,
    tid: &[u8; 12],
    peer: &SocketAddr,
    len: usize,
) -> Option<usize> {
    let a = xor_addr_len(peer);
    let header = indication_header_len(peer);
    let total = header + padded(len);
    let body = u16::try_from(total - MESSAGE_HEADER_SIZE).ok()?;
    let len16 = u16::try_from(len).ok()?;
    let (hdr, attrs) = buf
        .get_mut(..total)?
        .split_first_chunk_mut::<MESSAGE_HEADER_SIZE>()?;
    let typ = MessageType::new(method, CLASS_INDICATION).value();
    let ([t0, t1], [b0, b1], [c0, c1, c2, c3]) = (
        typ.to_be_bytes(),
        body.to_be_bytes(),
        MAGIC_COOKIE.to_be_bytes(),
    );
    let [i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11] = *tid;
    *hdr = [
        t0, t1, b0, b1, c0, c1, c2, c3, i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11,
    ];
    let (peer_hdr, rest) = attrs.split_first_chunk_mut::<4>()?;
    let ([p0, p1], [a0, a1]) = (
        ATTR_XOR_PEER_ADDRESS.0.to_be_bytes(),
        (a as u16).to_be_bytes(),
    );
    *peer_hdr = [p0, p1, a0, a1];
    let (value, rest) = rest.split_at_mut_checked(a)?;
    if encode_xor_addr(*peer, tid, value) != a {
        return None;
    }
    let (data_hdr, payload) = rest.split_first_chunk_mut::<4>()?;
    let ([d0, d1], [l0, l1]) = (ATTR_DATA.0.to_be_bytes(), len16.to_be_bytes());
    *data_hdr = [d0, d1, l0, l1];
    payload.get_mut(len..)?.fill(0);
    Some(total)
}

/// The peer and the DATA value's range of a Data indication (what a client receives from a
/// peer without a channel); `None` for anything else or a malformed message. A walk over the
/// attributes for the data path (far cheaper than a full
/// [`Parsed`](crate::engine::wire::Parsed)): the first
/// of each attribute counts, FINGERPRINT is not checked (indications are not authenticated).
pub fn parse_data(raw: &[u8]) -> Option<(SocketAddr, Range<usize>)> {
    let (hdr, _) = raw.split_first_chunk::<MESSAGE_HEADER_SIZE>()?;
    let [t0, t1, l0, l1, c0, c1, c2, c3, tid @ ..] = *hdr;
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    if MessageType::new(METHOD_DATA, CLASS_INDICATION).value() != u16::from_be_bytes([t0, t1])
        || u32::from_be_bytes([c0, c1, c2, c3]) != MAGIC_COOKIE
        || MESSAGE_HEADER_SIZE + len != raw.len()
    {
        return None;
    }
    let (mut peer, mut data) = (None, None);
    let mut off = MESSAGE_HEADER_SIZE;
    while let (Some(t), Some(l)) = (be16(raw, off), be16(raw, off + 2)) {
        let value = off + 4..off + 4 + usize::from(l);
        let bytes = raw.get(value.clone())?;
        if t == ATTR_XOR_PEER_ADDRESS.0 && peer.is_none() {
            peer = Some(decode_xor_addr(bytes, &tid)?);
        } else if t == ATTR_DATA.0 && data.is_none() {
            data = Some(value.clone());
        }
        off = value.start + padded(value.len());
    }
    Some((peer?, data?))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::engine::wire::parse_send;
    use stun::message::{Message, METHOD_SEND};
    use stun::xoraddr::XorMappedAddress;

    #[test]
    fn indications_parse_with_the_stun_crate_and_back() {
        for peer in ["127.0.0.1:9".parse().unwrap(), "[::1]:9".parse().unwrap()] {
            let mut buf = vec![0xffu8; 128];
            let tid = [7u8; 12];
            let h = indication_header_len(&peer);
            buf[h..h + 5].copy_from_slice(b"hello");
            let n = write_indication_header(&mut buf, METHOD_SEND, &tid, &peer, 5).unwrap();
            assert_eq!(n, h + 8);
            let mut m = Message::new();
            m.unmarshal_binary(&buf[..n]).unwrap();
            let mut x = XorMappedAddress::default();
            x.get_from_as(&m, ATTR_XOR_PEER_ADDRESS).unwrap();
            assert_eq!(SocketAddr::new(x.ip, x.port), peer);
            assert_eq!(m.get(ATTR_DATA).unwrap(), b"hello");
            let (p, r) = parse_send(&buf[..n]).unwrap();
            assert_eq!((p, &buf[r]), (peer, &b"hello"[..]));
            assert_eq!(parse_data(&buf[..n]), None, "a Send indication is not Data");
            write_indication_header(&mut buf, METHOD_DATA, &tid, &peer, 5).unwrap();
            let (p, r) = parse_data(&buf[..n]).unwrap();
            assert_eq!((p, &buf[r]), (peer, &b"hello"[..]));
            assert_eq!(
                write_indication_header(&mut buf[..n - 1], METHOD_DATA, &tid, &peer, 5),
                None
            );
        }
    }

    #[test]
    fn channel_data_frames() {
        let mut buf = [0xffu8; 16];
        buf[4..7].copy_from_slice(b"abc");
        assert_eq!(write_channel_header(&mut buf, 0x4000, 3, true), Some(8));
        assert_eq!(buf[7], 0);
        assert_eq!(stream_frame_len(&buf), Ok(Some(8)));
        assert_eq!(channel_data(&buf[..8]), Some((0x4000, 4..7)));
        assert_eq!(write_channel_header(&mut buf, 0x4000, 3, false), Some(7));
        assert_eq!(write_channel_header(&mut buf, 0x4000, 13, true), None);
        assert_eq!(stream_frame_len(&[0xc0, 0, 0, 0]), Err(0xc0));
        assert_eq!(stream_frame_len(&[0x01, 0x01, 0, 8]), Ok(Some(28)));
        assert_eq!(stream_frame_len(&[0x40, 0]), Ok(None));
    }

    #[test]
    fn hostile_bytes_never_panic_the_parsers() {
        // A Data indication with DATA, then every truncation and a lying length of each part.
        let mut m = vec![0x00, 0x17, 0x00, 0x18, 0x21, 0x12, 0xA4, 0x42];
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&[
            0x00, 0x12, 0x00, 0x08, 0, 1, 0x21, 0x1B, 0x5E, 0x12, 0xA4, 0x43,
        ]);
        m.extend_from_slice(&[0x00, 0x13, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        let (peer, r) = parse_data(&m).unwrap();
        assert_eq!(peer, "127.0.0.1:9".parse().unwrap());
        assert_eq!(&m[r], &[1, 2, 3, 4, 5]);
        let mut wrong_cookie = m.clone();
        wrong_cookie[4] ^= 1;
        assert_eq!(parse_data(&wrong_cookie), None);
        assert_eq!(
            parse_data(&[&m[..], &[0]].concat()),
            None,
            "length mismatch"
        );
        // A second DATA does not count; a message without DATA or XOR-PEER-ADDRESS is none.
        let mut two = m.clone();
        two.extend_from_slice(&[0x00, 0x13, 0x00, 0x01, 9, 0, 0, 0]);
        two[3] += 8;
        assert_eq!(&two[parse_data(&two).unwrap().1], &[1, 2, 3, 4, 5]);
        let mut no_data = m[..32].to_vec();
        no_data[3] = 12;
        assert_eq!(parse_data(&no_data), None);
        for cut in 0..m.len() {
            let _ = parse_data(&m[..cut]);
            let _ = channel_data(&m[..cut]);
            let _ = stream_frame_len(&m[..cut]);
            for lie in [0u8, 3, 0xFF] {
                let mut bad = m[..cut].to_vec();
                if let Some(b) = bad.get_mut(cut.saturating_sub(1)) {
                    *b = lie;
                }
                let _ = parse_data(&bad);
                let _ = channel_data(&bad);
            }
        }
        assert_eq!(channel_data(&[0x40, 0x00, 0xFF, 0xFF, 1]), None);
        assert_eq!(channel_data(&[0x40]), None);
        assert_eq!(channel_data(&[0x80, 0x00, 0x00, 0x00]), None);
    }
}

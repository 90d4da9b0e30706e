//! The data-path encodings turnctl writes and reads without allocating: ChannelData
//! (RFC 8656 §12.4), Send and Data indications (§11), and the framing of STUN and
//! ChannelData on TCP/TLS streams (§12.5). Control-plane messages use the `stun` crate.
//!
//! The parsers read server bytes with slice patterns and `get(..)` only (indexing denied);
//! the writers index buffers the caller sized (documented on each) and say so.

#![deny(clippy::indexing_slicing)]

use std::net::SocketAddr;

use stun::message::MAGIC_COOKIE;

pub const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
pub const ATTR_DATA: u16 = 0x0013;
const SEND_INDICATION: u16 = 0x0016;
const DATA_INDICATION: u16 = 0x0017;

/// Bytes before the payload of a ChannelData message.
pub const CHANNEL_HEADER: usize = 4;

/// Length of the complete frame at the start of a stream buffer, once its 4 first bytes are
/// there: STUN is 20 + length, ChannelData 4 + length padded to 4 (streams pad it).
/// `Err` when the bytes are neither (the stream is out of sync).
pub fn stream_frame_len(head: &[u8]) -> Result<Option<usize>, u8> {
    let &[b0, _, l0, l1, ..] = head else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    match b0 >> 6 {
        0 => Ok(Some(20 + len)),
        1 => Ok(Some(CHANNEL_HEADER + ((len + 3) & !3))),
        _ => Err(b0),
    }
}

/// Write a ChannelData header for `len` payload bytes; returns the frame length on a
/// stream (padded) or on a datagram transport (not padded).
// `buf` holds the header and the padded payload: the caller sized it.
#[allow(clippy::indexing_slicing)]
pub fn write_channel_header(buf: &mut [u8], number: u16, len: usize, stream: bool) -> usize {
    buf[0..2].copy_from_slice(&number.to_be_bytes());
    buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    if stream {
        let padded = (len + 3) & !3;
        buf[CHANNEL_HEADER + len..CHANNEL_HEADER + padded].fill(0);
        CHANNEL_HEADER + padded
    } else {
        CHANNEL_HEADER + len
    }
}

/// Length of the Send indication header (STUN header, XOR-PEER-ADDRESS, DATA header).
pub fn send_header_len(peer: &SocketAddr) -> usize {
    20 + 4 + xor_addr_len(peer) + 4
}

fn xor_addr_len(peer: &SocketAddr) -> usize {
    if peer.is_ipv4() {
        8
    } else {
        20
    }
}

/// Write a Send indication header for `len` payload bytes to `peer` into `buf` (which must
/// hold [`send_header_len`] + `len` + 3 bytes) and pad the payload; returns the message
/// length. The payload itself goes at `send_header_len(peer)`.
#[allow(clippy::indexing_slicing)] // sized by the caller, see above
pub fn write_send_header(buf: &mut [u8], tid: &[u8; 12], peer: &SocketAddr, len: usize) -> usize {
    let a = xor_addr_len(peer);
    let padded = (len + 3) & !3;
    let body = 4 + a + 4 + padded;
    buf[0..2].copy_from_slice(&SEND_INDICATION.to_be_bytes());
    buf[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    buf[8..20].copy_from_slice(tid);
    buf[20..22].copy_from_slice(&ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    buf[22..24].copy_from_slice(&(a as u16).to_be_bytes());
    write_xor_addr(&mut buf[24..24 + a], tid, peer);
    let d = 24 + a;
    buf[d..d + 2].copy_from_slice(&ATTR_DATA.to_be_bytes());
    buf[d + 2..d + 4].copy_from_slice(&(len as u16).to_be_bytes());
    let payload = d + 4;
    buf[payload + len..payload + padded].fill(0);
    20 + body
}

// `out` is exactly `xor_addr_len(peer)` bytes (write_send_header slices it so).
#[allow(clippy::indexing_slicing)]
fn write_xor_addr(out: &mut [u8], tid: &[u8; 12], peer: &SocketAddr) {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    out[0] = 0;
    out[2..4].copy_from_slice(&(peer.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    match peer {
        SocketAddr::V4(v4) => {
            out[1] = 1;
            for (i, b) in v4.ip().octets().iter().enumerate() {
                out[4 + i] = b ^ cookie[i];
            }
        }
        SocketAddr::V6(v6) => {
            out[1] = 2;
            for (i, b) in v6.ip().octets().iter().enumerate() {
                let k = if i < 4 { cookie[i] } else { tid[i - 4] };
                out[4 + i] = b ^ k;
            }
        }
    }
}

/// The application payload of a message from the server: ChannelData (any channel) or a
/// Data indication's DATA attribute. `None` for anything else (responses, garbage).
pub fn relayed_payload(msg: &[u8]) -> Option<&[u8]> {
    let &[b0, b1, l0, l1, ..] = msg else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    if b0 >> 6 == 1 {
        return msg.get(CHANNEL_HEADER..CHANNEL_HEADER + len);
    }
    if msg.len() < 20 || u16::from_be_bytes([b0, b1]) != DATA_INDICATION {
        return None;
    }
    let mut attrs = msg.get(20..20 + len)?;
    while let &[t0, t1, a0, a1, ..] = attrs {
        let t = u16::from_be_bytes([t0, t1]);
        let l = usize::from(u16::from_be_bytes([a0, a1]));
        let value = attrs.get(4..4 + l)?;
        if t == ATTR_DATA {
            return Some(value);
        }
        attrs = attrs.get((4 + ((l + 3) & !3)).min(attrs.len())..)?;
    }
    None
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use stun::message::Message;
    use stun::xoraddr::XorMappedAddress;

    #[test]
    fn send_indication_parses_with_the_stun_crate() {
        for peer in ["127.0.0.1:9".parse().unwrap(), "[::1]:9".parse().unwrap()] {
            let mut buf = vec![0u8; 128];
            let tid = [7u8; 12];
            let h = send_header_len(&peer);
            buf[h..h + 5].copy_from_slice(b"hello");
            let n = write_send_header(&mut buf, &tid, &peer, 5);
            let mut m = Message::new();
            m.unmarshal_binary(&buf[..n]).unwrap();
            let mut x = XorMappedAddress::default();
            x.get_from_as(&m, stun::attributes::ATTR_XOR_PEER_ADDRESS)
                .unwrap();
            assert_eq!(SocketAddr::new(x.ip, x.port), peer);
            assert_eq!(m.get(stun::attributes::ATTR_DATA).unwrap(), b"hello");
            // The same bytes as a Data indication come back out.
            buf[1] = 0x17;
            assert_eq!(relayed_payload(&buf[..n]).unwrap(), b"hello");
        }
    }

    #[test]
    fn channel_data_frames() {
        let mut buf = [0xffu8; 16];
        buf[4..7].copy_from_slice(b"abc");
        assert_eq!(write_channel_header(&mut buf, 0x4000, 3, true), 8);
        assert_eq!(buf[7], 0);
        assert_eq!(stream_frame_len(&buf), Ok(Some(8)));
        assert_eq!(relayed_payload(&buf[..8]).unwrap(), b"abc");
        assert_eq!(write_channel_header(&mut buf, 0x4000, 3, false), 7);
        assert_eq!(stream_frame_len(&[0xc0, 0, 0, 0]), Err(0xc0));
        assert_eq!(stream_frame_len(&[0x01, 0x01, 0, 8]), Ok(Some(28)));
    }

    #[test]
    fn hostile_server_bytes_never_panic_the_parsers() {
        // A Data indication with DATA, then every truncation and a lying length of each part.
        let mut m = vec![0x00, 0x17, 0x00, 0x0C, 0x21, 0x12, 0xA4, 0x42];
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&[0x00, 0x13, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        assert_eq!(relayed_payload(&m), Some(&[1, 2, 3, 4, 5][..]));
        for cut in 0..m.len() {
            let _ = relayed_payload(&m[..cut]);
            let _ = stream_frame_len(&m[..cut]);
            for lie in [0u8, 3, 0xFF] {
                let mut bad = m[..cut].to_vec();
                if let Some(b) = bad.get_mut(cut.saturating_sub(1)) {
                    *b = lie;
                }
                let _ = relayed_payload(&bad);
            }
        }
        assert_eq!(relayed_payload(&[0x40, 0x00, 0xFF, 0xFF, 1]), None);
        assert_eq!(relayed_payload(&[0x40]), None);
    }
}

//! What turnctl reads back on the data path: the application payload of a message from the
//! server, on turnd-proto's parsers of ChannelData and Data indications (the frames it sends
//! are built with `turnd_proto::frames` too). Control-plane messages use the `stun` crate.

use turnd_proto::frames::{channel_data, parse_data};

/// The application payload of a message from the server: ChannelData (any channel) or a
/// Data indication's DATA attribute. `None` for anything else (responses, garbage).
pub fn relayed_payload(msg: &[u8]) -> Option<&[u8]> {
    let (_, range) = channel_data(msg).or_else(|| parse_data(msg).map(|(_, r)| (0, r)))?;
    msg.get(range)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use stun::message::{METHOD_DATA, METHOD_SEND};
    use turnd_proto::frames::{
        indication_header_len, write_channel_header, write_indication_header,
    };

    use super::relayed_payload;

    #[test]
    fn payloads_of_channel_data_and_data_indications_only() {
        let peer: SocketAddr = "[::1]:9".parse().unwrap();
        let mut buf = vec![0u8; 64];
        let h = indication_header_len(&peer);
        buf[h..h + 5].copy_from_slice(b"hello");
        let n = write_indication_header(&mut buf, METHOD_DATA, &[7; 12], &peer, 5).unwrap();
        assert_eq!(relayed_payload(&buf[..n]), Some(&b"hello"[..]));
        let n = write_indication_header(&mut buf, METHOD_SEND, &[7; 12], &peer, 5).unwrap();
        assert_eq!(
            relayed_payload(&buf[..n]),
            None,
            "a Send indication is not relayed data"
        );
        buf[4..7].copy_from_slice(b"abc");
        let n = write_channel_header(&mut buf, 0x4001, 3, true).unwrap();
        assert_eq!(relayed_payload(&buf[..n]), Some(&b"abc"[..]));
        assert_eq!(relayed_payload(&[0x40, 0x00, 0xFF, 0xFF, 1]), None);
        assert_eq!(relayed_payload(&[0x01, 0x01, 0x00, 0x00]), None);
    }
}

//! STUN/ChannelData parsing (`engine::wire`) and stream framing (`net::stream::frame_len`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnd_proto::engine::wire::{decode_xor_addr, parse_send, Parsed};
use turnd::net::stream::frame_len;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Parsed::parse(data) {
        for a in p.attrs() {
            assert!(a.value.0 + a.value.1 <= data.len());
        }
        let _ = p.integrity_matches(&[0u8; 16]);
        let _ = p.unknown_required(&[]);
        for v in p.get_all(stun::attributes::ATTR_XOR_PEER_ADDRESS) {
            let _ = decode_xor_addr(v, &p.tid.0);
        }
    }
    if let Some((_, range)) = parse_send(data) {
        assert!(range.end <= data.len());
    }
    let _ = decode_xor_addr(data, &[7; 12]);
    // Framing: a complete frame is never longer than the buffer and never empty, and the
    // answer does not change when more bytes follow (no desynchronisation).
    match frame_len(data) {
        Ok(Some(n)) => {
            assert!(n >= 4 && n <= data.len(), "{n} of {}", data.len());
            if let Some(prefix) = data.get(..n) {
                assert_eq!(frame_len(prefix), Ok(Some(n)));
            }
        }
        Ok(None) => {
            for cut in [0, data.len() / 2] {
                if let Some(prefix) = data.get(..cut) {
                    assert!(
                        matches!(frame_len(prefix), Ok(None)),
                        "a prefix of a partial frame"
                    );
                }
            }
        }
        Err(_) => {}
    }
});

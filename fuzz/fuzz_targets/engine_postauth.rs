//! The engine after authentication: structured request sequences (Allocate, Refresh,
//! CreatePermission, ChannelBind, Send, ChannelData, peer data, time, closes) with arbitrary
//! attribute sets, lengths and values, signed after mutating. The harness checks after every
//! step: no panic, state within the quotas, one timer per allocation, every bound relay port
//! owned by a live allocation; at the end, after expiry, every port and quota slot returned.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnd_proto::engine::testing::{Harness, Step};

fuzz_target!(|steps: Vec<Step>| {
    let mut h = Harness::new();
    for s in steps.iter().take(200) {
        h.run(s);
    }
    h.finish();
});

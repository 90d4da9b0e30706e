//! The interop tier, one binary of its own: clients we did not write (coturn's
//! `turnutils_uclient`, Python `aioice`) against turnd, and harness self-tests against coturn's
//! `turnserver`. Kept out of `tests/it`: uclient counts stream *reads* as messages, so when a
//! busy CPU makes it send in bursts, echoes that arrive in one TLS record are counted as one
//! and the run reports loss; here it only shares the machine with its own kind, as before the
//! fold. One module per former `tests/<name>.rs`; [`common`] is the harness, a module per tool
//! (processes, net, echo peer, uclient, aioice, coturn, TLS certificates, recipes).

mod common;

mod auth_sha256;
mod bandwidth;
mod bound_credentials;
mod coalesce;
mod dtls;
mod interop_streams;
mod interop_udp;
mod tcp_relay;
mod webhook;

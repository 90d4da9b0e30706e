//! Tracing setup and log redaction. (placeholder until the config helper lands)
use std::net::SocketAddr;
pub fn redact_addr(addr: &SocketAddr, on: bool) -> String {
    let _ = on;
    addr.to_string()
}
pub fn redact_user(u: &str, on: bool) -> String {
    let _ = on;
    u.escape_debug().to_string()
}

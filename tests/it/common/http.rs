//! One-shot HTTP/1.1 requests over plain TCP, read to the end ([`http_get`]).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A whole HTTP response: status code, the head's text and the body.
pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads a response to the end of the stream (within 5 s): the request said `Connection: close`.
pub async fn read_response(s: &mut (impl AsyncRead + Unpin)) -> HttpResponse {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("a UTF-8 HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    HttpResponse {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

/// A one-shot HTTP/1.1 GET with `Connection: close` and the header lines `extra` (each
/// ending in CRLF).
pub async fn http_get(addr: SocketAddr, path: &str, host: &str, extra: &str) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s).await
}

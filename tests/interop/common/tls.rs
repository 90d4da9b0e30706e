//! Test certificates: [`TestCert`] (PEM files) and [`pem_certificates`].

use std::fs;
use std::path::PathBuf;

use base64::Engine as _;

use super::*;

/// A self-signed certificate (rcgen, ECDSA P-256) and its key as PEM files in a scratch
/// directory: the server's `cert`/`key`, and `cert` alone as a client's only trust anchor.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: ScratchDir,
}

impl TestCert {
    /// Subject alternative names: IP literals become IP SANs, anything else DNS names.
    pub fn generate(names: &[&str]) -> TestCert {
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names).expect("generate a test certificate");
        let dir = ScratchDir::new("cert");
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        fs::write(&cert_path, cert.pem()).expect("write cert.pem");
        fs::write(&key_path, signing_key.serialize_pem()).expect("write key.pem");
        TestCert {
            cert: cert_path,
            key: key_path,
            _dir: dir,
        }
    }

    /// For 127.0.0.1, ::1 and localhost.
    pub fn loopback() -> TestCert {
        Self::generate(&["127.0.0.1", "::1", "localhost"])
    }
}

/// DER certificates as one PEM bundle (e.g. a server's served chain, to trust it).
pub fn pem_certificates<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut pem = String::new();
    for der in ders {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

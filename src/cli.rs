//! Command-line flags (each also readable from a `TURND_*` environment variable).

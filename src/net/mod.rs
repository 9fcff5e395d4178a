//! HTTP for every stage above: the one strict URL parser, and the ureq agents with the trust they
//! give (identity endpoints without a proxy; Key Vault, Entra ID and `--notify-url` with the proxy
//! and the roots: bundled, `SSL_CERT_FILE`/`SSL_CERT_DIR`, `--ca-file`).
//!
//! May use: `error`, `base`.

pub mod http;
pub mod url;

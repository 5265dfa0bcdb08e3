//! `X-Shopify-Hmac-Sha256`: base64 of HMAC-SHA256 over the raw body, keyed by the app secret.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tributary_runtime::secrets::Secret;

type HmacSha256 = Hmac<Sha256>;

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    B64.encode(mac.finalize().into_bytes())
}

/// True when `signature` is the body's HMAC under any of `secrets` (two during a rotation). The
/// comparison is constant-time (`Mac::verify_slice`).
pub fn verify(secrets: &[Secret], body: &[u8], signature: &str) -> bool {
    let Ok(expected) = B64.decode(signature) else {
        return false;
    };
    secrets.iter().any(|secret| {
        let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

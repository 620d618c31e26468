//! VERIFY: raw body bytes + `X-Hub-Signature` → [`VerifiedWebhook`].
//!
//! Intercom signs the exact body bytes with HMAC-SHA1 keyed by the app's
//! client secret and sends `sha1=<40 lowercase hex>`. We compare in constant
//! time against every configured secret (several while one is rotated). A
//! `VerifiedWebhook` can only be made here, so code downstream of the
//! receiver cannot be handed bytes nobody checked.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::secret::Secret;

type HmacSha1 = Hmac<Sha1>;

/// Why a request failed verification. Logged and counted; never sent back in
/// detail (the client gets a bare `401`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing signature header")]
    Missing,
    #[error("malformed signature header")]
    Malformed,
    #[error("signature mismatch")]
    Mismatch,
}

impl VerifyError {
    /// A short fixed label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            VerifyError::Missing => "missing",
            VerifyError::Malformed => "malformed",
            VerifyError::Mismatch => "mismatch",
        }
    }
}

/// A body whose signature matched one of the client secrets.
#[derive(Debug, Clone)]
pub struct VerifiedWebhook {
    body: Bytes,
}

impl VerifiedWebhook {
    /// A notification made from what Intercom's REST API answered, over TLS
    /// and to our token (reconciliation): trusted as a signed one is.
    pub fn from_intercom_api(body: Bytes) -> Self {
        VerifiedWebhook { body }
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

#[derive(Clone)]
pub struct Verifier {
    keys: Vec<HmacSha1>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({} secrets, [redacted])", self.keys.len())
    }
}

impl Verifier {
    pub fn new(secrets: &[Secret]) -> Self {
        let keys = secrets
            .iter()
            .map(|s| HmacSha1::new_from_slice(s.expose().as_bytes()).expect("HMAC takes any key length"))
            .collect();
        Verifier { keys }
    }

    pub fn verify(&self, body: Bytes, header: Option<&[u8]>) -> Result<VerifiedWebhook, VerifyError> {
        let header = header.ok_or(VerifyError::Missing)?;
        let expected = parse_header(header)?;
        // Check every secret, with no early exit, so timing does not tell
        // which secret matched.
        let mut ok = false;
        for key in &self.keys {
            let mut mac = key.clone();
            mac.update(&body);
            ok |= mac.verify_slice(&expected).is_ok();
        }
        if ok {
            Ok(VerifiedWebhook { body })
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

fn parse_header(header: &[u8]) -> Result<[u8; 20], VerifyError> {
    let hex_part = header.strip_prefix(b"sha1=").ok_or(VerifyError::Malformed)?;
    if hex_part.len() != 40 || !hex_part.iter().all(u8::is_ascii_hexdigit) {
        return Err(VerifyError::Malformed);
    }
    let mut out = [0u8; 20];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| VerifyError::Malformed)?;
    Ok(out)
}

/// `sha1=<hex>` for a body: what Intercom would send (used by `simulate`,
/// the load generator and tests).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha1::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // facts.md §7.3, exact bytes.
    const DELETED: &str = r#"{"type":"notification_event","app_id":"abc12xyz","data":{"type":"notification_event_data","item":{"type":"contact","id":"65f0c0ffee0000000000beef","external_id":"cust-1042","deleted":true}},"links":{},"id":"notif_0b6a3c1e-7d2f-4e59-9a61-3f2d8c4b5e70","topic":"contact.deleted","delivery_status":"pending","delivery_attempts":1,"delivered_at":0,"first_sent_at":1767229201,"created_at":1767229200,"self":null}"#;

    fn verifier() -> Verifier {
        Verifier::new(&[Secret::new("test-client-secret")])
    }

    #[test]
    fn published_vectors() {
        assert_eq!(DELETED.len(), 407);
        let v = verifier();
        let ok = v.verify(
            Bytes::from_static(DELETED.as_bytes()),
            Some(b"sha1=4a6af54a377a7e45719b1b4948f1421a9af54275"),
        );
        assert!(ok.is_ok());
        let reserialised = v.verify(
            Bytes::from_static(DELETED.as_bytes()),
            Some(b"sha1=75aa54668698083fbb96fbbbdf88153248fd504d"),
        );
        assert_eq!(reserialised.unwrap_err(), VerifyError::Mismatch);
        let utf8 = "{\"topic\":\"ping\",\"note\":\"Zoë – 日本\"}";
        assert!(v
            .verify(
                Bytes::from(utf8),
                Some(b"sha1=e66d196971baad198b718e6808cb23713e5f2cbd")
            )
            .is_ok());
        assert!(v
            .verify(
                Bytes::from(utf8),
                Some(b"sha1=f43ad2dfac8b81e76cb32b53454d2c3d954fd58c")
            )
            .is_err());
        assert_eq!(
            sign("test-client-secret", DELETED.as_bytes()),
            "sha1=4a6af54a377a7e45719b1b4948f1421a9af54275"
        );
    }

    #[test]
    fn malformed_headers() {
        let v = verifier();
        let body = || Bytes::from_static(b"{}");
        assert_eq!(v.verify(body(), None).unwrap_err(), VerifyError::Missing);
        for bad in [
            &b"4a6af54a377a7e45719b1b4948f1421a9af54275"[..],
            b"sha256=4a6af54a377a7e45719b1b4948f1421a9af54275",
            b"sha1=4a6af54a",
            b"sha1=zz6af54a377a7e45719b1b4948f1421a9af54275",
            b"sha1=",
        ] {
            assert_eq!(v.verify(body(), Some(bad)).unwrap_err(), VerifyError::Malformed);
        }
    }

    #[test]
    fn any_rotated_secret_verifies() {
        let v = Verifier::new(&[Secret::new("old"), Secret::new("new")]);
        assert!(v
            .verify(Bytes::from_static(b"x"), Some(sign("old", b"x").as_bytes()))
            .is_ok());
        assert!(v
            .verify(Bytes::from_static(b"x"), Some(sign("new", b"x").as_bytes()))
            .is_ok());
        assert!(v
            .verify(Bytes::from_static(b"x"), Some(sign("other", b"x").as_bytes()))
            .is_err());
        assert!(format!("{v:?}").contains("redacted"));
    }
}

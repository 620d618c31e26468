//! The `X-Hub-Signature` header, whatever its bytes, against a body: only a
//! correct `sha1=<40 hex>` for one of the secrets verifies, nothing panics.
#![no_main]

use bytes::Bytes;
use intercom_webhooks::secret::Secret;
use intercom_webhooks::verify::{sign, Verifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: how much of the rest is the header.
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (cut as usize).min(rest.len());
    let (header, body) = rest.split_at(cut);
    let verifier = Verifier::new(&[Secret::new("fuzz-secret-one"), Secret::new("fuzz-secret-two")]);
    let verified = verifier.verify(Bytes::copy_from_slice(body), Some(header)).is_ok();
    let good = [sign("fuzz-secret-one", body), sign("fuzz-secret-two", body)];
    // `sha1=` as Intercom writes it, then the hex in either case.
    let expected = header.starts_with(b"sha1=") && good.iter().any(|g| g.as_bytes().eq_ignore_ascii_case(header));
    assert_eq!(verified, expected, "header {:?}", String::from_utf8_lossy(header));
    assert!(verifier
        .verify(Bytes::copy_from_slice(body), Some(good[1].as_bytes()))
        .is_ok());
});

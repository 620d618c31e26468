//! A verified body, whatever its bytes: classified (notification, ping or
//! invalid), its dedup key made, and every identifier read out of it for
//! the subject index. None of it may panic.
#![no_main]

use intercom_webhooks::envelope::{classify, Classified};
use intercom_webhooks::identifiers::identifiers;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match classify(data) {
        Classified::Notification { key, envelope } => {
            assert!(!key.is_empty());
            assert!(!envelope.topic.is_empty());
        }
        Classified::Invalid { key, why } => {
            assert!(key.starts_with("inv_"));
            assert!(!why.reason().is_empty());
        }
        Classified::Ping => {}
    }
    let ids = identifiers(data);
    let _ = ids.plain_values();
});

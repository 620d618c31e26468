//! The receiver's CPU per notification, step by step, outside the server
//! (run by hand, not in CI):
//!
//! ```text
//! cargo bench --bench receive_cpu
//! # instruction counts, repeatable whatever else the machine does:
//! valgrind --tool=callgrind target/release/deps/receive_cpu-* --bench
//! ```
//!
//! Each step runs over the 83 captured Intercom bodies and over bodies
//! shaped like the load generator's (1-8 KB conversation replies), and
//! prints nanoseconds per body. The steps are those a webhook takes before
//! the store: the signature, the envelope, the identifiers for the subject
//! index, and (PostgreSQL backend) the compression before sealing.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use intercom_webhooks::envelope::classify;
use intercom_webhooks::identifiers::identifiers;
use intercom_webhooks::secret::Secret;
use intercom_webhooks::verify::{sign, Verifier};

fn captures() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/intercom/captures");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .expect("tests/fixtures/intercom/captures")
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect();
    out.sort();
    out
}

/// Like `examples/loadgen.rs`'s: a reply with a 1-8 KB body.
fn generated(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let pad = "x".repeat(1024 + (i * 7919) % 7168 - 600);
            serde_json::to_vec(&serde_json::json!({
                "type": "notification_event", "app_id": "abc12xyz",
                "data": {"type": "notification_event_data", "item": {
                    "type": "conversation", "id": format!("{}", 215_470_000_000_000u64 + i as u64),
                    "created_at": 1_767_226_000 + i, "updated_at": 1_767_226_060 + i, "state": "open",
                    "source": {"type": "conversation", "delivered_as": "customer_initiated", "body": format!("<p>{pad}</p>")},
                    "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": format!("c{}", i % 3000)}]},
                }},
                "links": {}, "id": format!("notif_{i:032x}"), "topic": "conversation.user.replied",
                "delivery_status": "pending", "delivery_attempts": 1, "delivered_at": 0,
                "first_sent_at": 1_767_226_000 + i, "created_at": 1_767_226_000 + i, "self": null
            }))
            .expect("a JSON value serialises")
        })
        .collect()
}

/// Runs `step` over every body `rounds` times; nanoseconds per body.
fn time(bodies: &[Vec<u8>], rounds: usize, mut step: impl FnMut(&[u8])) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        for b in bodies {
            step(b);
        }
    }
    start.elapsed().as_nanos() as f64 / (rounds * bodies.len()) as f64
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then
    // one round, to see that it runs.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        200
    } else {
        1
    };
    let verifier = Verifier::new(&[Secret::new("bench-secret")]);
    let mut compressor = zstd::bulk::Compressor::new(1).expect("a zstd context");
    for (name, bodies) in [("captures", captures()), ("generated", generated(500))] {
        let bytes: Vec<Bytes> = bodies.iter().map(|b| Bytes::copy_from_slice(b)).collect();
        let sigs: Vec<String> = bodies.iter().map(|b| sign("bench-secret", b)).collect();
        let mean = bodies.iter().map(Vec::len).sum::<usize>() / bodies.len();
        println!("{name}: {} bodies, {mean} bytes on average", bodies.len());
        let mut i = 0;
        let verify = time(&bodies, rounds, |_| {
            let (body, sig) = (&bytes[i % bytes.len()], &sigs[i % sigs.len()]);
            i += 1;
            black_box(verifier.verify(body.clone(), Some(sig.as_bytes())).is_ok());
        });
        let envelope = time(&bodies, rounds, |b| {
            black_box(classify(b));
        });
        let ids = time(&bodies, rounds, |b| {
            black_box(identifiers(b));
        });
        let pack = time(&bodies, rounds, |b| {
            black_box(compressor.compress(b).map(|c| c.len()).unwrap_or(0));
        });
        println!(
            "  ns per body: signature {verify:.0}, envelope {envelope:.0}, identifiers {ids:.0}, zstd level 1 {pack:.0}"
        );
    }
}

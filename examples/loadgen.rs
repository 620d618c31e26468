//! Load generator for the webhook receiver (run by hand, not in CI).
//!
//! Pre-signs realistic notifications (1-8 KB, a share of duplicates and of
//! bad signatures), sends them over N keep-alive connections with a minimal
//! HTTP/1.1 client (so the generator takes as little of the machine as it
//! can), and reports throughput and latency percentiles.
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/webhooks/intercom \
//!     --secret test-client-secret --connections 64 --seconds 10
//! # at a steady rate (a request delayed by a slow previous answer is timed
//! # from when it was due):
//! cargo run --release --example loadgen -- ... --connections 16 --rate 1000
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    url: String,
    secret: String,
    connections: usize,
    seconds: u64,
    rate: Option<f64>,
    dup_pct: f64,
    bad_pct: f64,
    bodies: usize,
    /// Print latency percentiles per window of this many seconds too.
    windows: Option<u64>,
    /// Contacts are `c{contact_base + i % 3000}`.
    contact_base: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:8080/webhooks/intercom".into(),
        secret: "test-client-secret".into(),
        connections: 64,
        seconds: 10,
        rate: None,
        dup_pct: 5.0,
        bad_pct: 1.0,
        bodies: 400_000,
        windows: None,
        contact_base: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--url" => a.url = v,
            "--secret" => a.secret = v,
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--rate" => a.rate = Some(v.parse().expect("--rate R")),
            "--dup-pct" => a.dup_pct = v.parse().expect("--dup-pct P"),
            "--bad-pct" => a.bad_pct = v.parse().expect("--bad-pct P"),
            "--bodies" => a.bodies = v.parse().expect("--bodies N"),
            "--windows" => a.windows = Some(v.parse().expect("--windows SECONDS")),
            "--contact-base" => a.contact_base = v.parse().expect("--contact-base N"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    New,
    Duplicate,
    BadSignature,
}

/// One pre-built request: the bytes to write, and what it is.
struct Prepared {
    bytes: Vec<u8>,
    kind: Kind,
}

fn build(args: &Args, host: &str, path: &str) -> Vec<Prepared> {
    let mut rng = rand::thread_rng();
    let mut out: Vec<Prepared> = Vec::with_capacity(args.bodies);
    let mut sent_bodies: Vec<Vec<u8>> = Vec::new();
    for i in 0..args.bodies {
        let roll: f64 = rng.gen_range(0.0..100.0);
        let (body, kind) = if roll < args.dup_pct && !sent_bodies.is_empty() {
            (
                sent_bodies[rng.gen_range(0..sent_bodies.len())].clone(),
                Kind::Duplicate,
            )
        } else {
            let size: usize = rng.gen_range(1024..8192);
            let pad = "x".repeat(size.saturating_sub(600));
            let now = 1_767_226_000 + i as i64;
            let body = serde_json::to_vec(&serde_json::json!({
                "type": "notification_event", "app_id": "abc12xyz",
                "data": {"type": "notification_event_data", "item": {
                    "type": "conversation", "id": format!("{}", 215_470_000_000_000u64 + (i % 5000) as u64),
                    "created_at": now - 60, "updated_at": now, "state": "open", "open": true, "read": false,
                    "source": {"type": "conversation", "delivered_as": "customer_initiated", "body": format!("<p>{pad}</p>")},
                    "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": format!("c{}", args.contact_base + i % 3000)}]},
                    "statistics": {"count_conversation_parts": 3}
                }},
                "links": {}, "id": format!("notif_{:016x}{:016x}", rng.gen::<u64>(), rng.gen::<u64>()), "topic": "conversation.user.replied",
                "delivery_status": "pending", "delivery_attempts": 1, "delivered_at": 0,
                "first_sent_at": now, "created_at": now, "self": null
            }))
            .unwrap();
            if sent_bodies.len() < 10_000 {
                sent_bodies.push(body.clone());
            }
            (body, Kind::New)
        };
        let bad = rng.gen_range(0.0..100.0) < args.bad_pct;
        let sig = if bad {
            intercom_webhooks::verify::sign("not-the-secret", &body)
        } else {
            intercom_webhooks::verify::sign(&args.secret, &body)
        };
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nX-Hub-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        out.push(Prepared {
            bytes: req,
            kind: if bad { Kind::BadSignature } else { kind },
        });
    }
    out
}

/// Reads one response; returns its status code.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
            let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut tmp).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return Ok(status);
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn main() {
    let args = parse_args();
    let rest = args.url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    eprintln!("preparing {} signed requests...", args.bodies);
    let prepared = Arc::new(build(&args, host, path));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let host = host.to_string();
    let cpu_before = process_cpu_seconds();
    runtime.block_on(async move {
        let next = Arc::new(AtomicUsize::new(0));
        // Requests sent and not yet answered: how bunched the arrivals are.
        let outstanding = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..args.connections {
            let (prepared, next, host) = (prepared.clone(), next.clone(), host.clone());
            let outstanding = outstanding.clone();
            // At a rate, connection c sends at c/N of each interval: evenly
            // spread (one a millisecond at 1,000/s; tokio's timer has 1 ms
            // resolution, so higher rates go out in per-millisecond groups).
            let interval = args.rate.map(|r| Duration::from_secs_f64(args.connections as f64 / r));
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(&host).await.expect("connect");
                s.set_nodelay(true).ok();
                let mut buf = Vec::with_capacity(8192);
                // (kind, status, latency in µs, requests in flight at send,
                // ms since the start when it was due)
                let mut lat: Vec<(Kind, u16, u32, u32, u32)> = Vec::new();
                let mut scheduled = Instant::now()
                    + interval
                        .map(|i| i.mul_f64(c as f64 / args.connections as f64))
                        .unwrap_or_default();
                let mut last_done = Instant::now();
                while Instant::now() < deadline {
                    if interval.is_some() {
                        tokio::time::sleep_until(scheduled.into()).await;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = prepared.get(i) else { break };
                    // At a steady rate, a request late because the previous
                    // answer came late counts from when it was due (no
                    // coordinated omission); one late only because the timer
                    // woke late (tokio's is 1 ms coarse) counts from when it
                    // was sent.
                    let t0 = if interval.is_some() && last_done > scheduled {
                        scheduled
                    } else {
                        Instant::now()
                    };
                    let depth = outstanding.fetch_add(1, Ordering::Relaxed) + 1;
                    let answered = match s.write_all(&p.bytes).await {
                        Ok(()) => read_response(&mut s, &mut buf).await,
                        Err(e) => Err(e),
                    };
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                    let Ok(status) = answered else { break };
                    last_done = Instant::now();
                    lat.push((
                        p.kind,
                        status,
                        (last_done - t0).as_micros() as u32,
                        depth as u32,
                        (t0 - start).as_millis() as u32,
                    ));
                    if let Some(iv) = interval {
                        scheduled += iv;
                    }
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut by_status: HashMap<u16, usize> = HashMap::new();
        for (_, st, _, _, _) in &all {
            *by_status.entry(*st).or_default() += 1;
        }
        let mut ok: Vec<u32> = all
            .iter()
            .filter(|(k, st, _, _, _)| *k != Kind::BadSignature && *st == 200)
            .map(|x| x.2)
            .collect();
        ok.sort_unstable();
        let mut depths: Vec<u32> = all.iter().map(|x| x.3).collect();
        depths.sort_unstable();
        let at = |v: &[u32], p: f64| {
            v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        let pct = |p: f64| at(&ok, p) as f64 / 1000.0;
        println!(
            "requests {} in {:.1}s: {:.0} req/s; accepted (200, signed) {} = {:.0}/s",
            all.len(),
            elapsed,
            all.len() as f64 / elapsed,
            ok.len(),
            ok.len() as f64 / elapsed
        );
        println!("status counts: {by_status:?}");
        println!(
            "latency of accepted (ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(0.999),
            pct(1.0)
        );
        println!(
            "requests in flight when one was sent (it included): p50 {}  p99 {}  max {}",
            at(&depths, 0.5),
            at(&depths, 0.99),
            at(&depths, 1.0)
        );
        if let Some(w) = args.windows {
            // Where in the run the slow answers were.
            let mut by_window: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
            for x in all.iter().filter(|x| x.0 != Kind::BadSignature && x.1 == 200) {
                by_window.entry(x.4 / (w as u32 * 1000)).or_default().push(x.2);
            }
            for (i, mut v) in by_window {
                v.sort_unstable();
                println!(
                    "window {:>4}-{:<4}s: {:>6} accepted, p50 {:.2}  p99 {:.2}  max {:.2} ms",
                    i as u64 * w,
                    (i as u64 + 1) * w,
                    v.len(),
                    at(&v, 0.5) as f64 / 1000.0,
                    at(&v, 0.99) as f64 / 1000.0,
                    at(&v, 1.0) as f64 / 1000.0
                );
            }
        }
        if let (Some(a), Some(b)) = (cpu_before, process_cpu_seconds()) {
            println!(
                "load generator CPU while sending: {:.1} us/request",
                (b - a) / all.len().max(1) as f64 * 1e6
            );
        }
    });
}

/// This process's user + system CPU time (Linux), to tell how much of the
/// machine the generator itself took.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

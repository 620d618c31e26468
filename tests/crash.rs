//! Crash safety: the real binary is SIGKILLed while 32 requests are in
//! flight; after a restart every notification that got a `200` is there,
//! and the store opens every time. In the end every one of them is
//! processed, including those killed before or while a worker had them.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use intercom_webhooks::verify::sign;
use serde_json::{json, Value};

const TOTAL: usize = 1000;
const IN_FLIGHT: usize = 32;

fn body(round: usize, i: usize) -> (String, Vec<u8>) {
    let id = format!("notif_crash-{round}-{i}");
    let item = json!({"type":"conversation","id": format!("{}", 215_000 + i),"updated_at": 1_767_226_000 + i as i64,
        "state":"open","open":true,"source":{"type":"conversation","body":"<p>padding to a realistic size</p>".repeat(40)}});
    let b = notification(&id, "conversation.user.replied", item, 1_767_226_000);
    (id, b)
}

/// Every stored event's id and status.
async fn listed_ids(admin: std::net::SocketAddr) -> HashMap<String, String> {
    let client = reqwest::Client::new();
    let mut ids = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("http://{admin}/admin/events?limit=5000");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let v: Value = client
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for e in v["events"].as_array().unwrap() {
            ids.insert(
                e["id"].as_str().unwrap().to_string(),
                e["status"].as_str().unwrap().to_string(),
            );
        }
        match v["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_string()),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_notification_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::new(dir.path());
    let mut all_acked: HashSet<String> = HashSet::new();
    for round in 0..3 {
        let (mut child, public, _admin) = bin.serve(&[]);
        let url = format!("http://{public}/webhooks/intercom");
        let client = reqwest::Client::new();
        let next = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let kill_after = 200 + round * 150;
        let mut tasks = Vec::new();
        for _ in 0..IN_FLIGHT {
            let (client, url, next, acked) = (client.clone(), url.clone(), next.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= TOTAL {
                        return;
                    }
                    let (id, b) = body(round, i);
                    let sig = sign(SECRET, &b);
                    match client.post(&url).header("x-hub-signature", sig).body(b).send().await {
                        Ok(r) if r.status() == 200 => acked.lock().unwrap().push(id),
                        Ok(_) => {}
                        Err(_) => return, // the server is gone
                    }
                }
            }));
        }
        // Kill it part-way, with requests in flight.
        loop {
            if acked.lock().unwrap().len() >= kill_after {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        let acked: Vec<String> = acked.lock().unwrap().clone();
        assert!(
            acked.len() >= kill_after && acked.len() < TOTAL,
            "killed part-way: {} acked",
            acked.len()
        );
        all_acked.extend(acked);

        // Restart: the store must open, and hold every acknowledged id.
        let (mut child, _public, admin) = bin.serve(&[]);
        let stored = listed_ids(admin).await;
        let missing: Vec<&String> = all_acked.iter().filter(|id| !stored.contains_key(*id)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged notifications lost, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // A last clean start: still every id, each once, and every one of them
    // processed in the end.
    let (mut child, _public, admin) = bin.serve(&[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let stored = listed_ids(admin).await;
        assert!(all_acked.iter().all(|id| stored.contains_key(id)));
        let unprocessed: Vec<(&String, &String)> = stored.iter().filter(|(_, st)| *st != "processed").collect();
        if unprocessed.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} events never processed, e.g. {:?}",
            unprocessed.len(),
            unprocessed.first()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

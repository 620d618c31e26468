//! Retention: second-scale retentions, dry runs, the background purge,
//! purge during intake, dedup after purge, crypto-shredding of segments.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SHORT: &str = r#"
[retention]
events = "1s"
markers = "30s"
contacts = "1s"
conversations = "1s"
tombstones = "1s"
audit = "1h"
[purge]
interval = "1h"
[store]
segment_max_age = "1s"
"#;

fn contact(n: usize) -> Vec<u8> {
    notification(
        &format!("notif_p{n}"),
        "contact.user.created",
        json!({"type":"contact","id": format!("65f0c0ffee00000000{n:06}"),"email":"zoe.example@example.org","updated_at":1767225600}),
        1767225600,
    )
}

fn segment_files(app: &TestApp) -> Vec<String> {
    written_segments(&app.data_dir())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_data_goes_newer_stays_dry_run_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), SHORT, test_env()).await;
    for n in 0..3 {
        assert_eq!(app.post_signed(&contact(n)).await.status(), 200);
    }
    app.post_signed(&notification(
        "notif_pdel",
        "contact.deleted",
        json!({"type":"contact","id":"65f0c0ffee0000000000dead","deleted":true}),
        1767225600,
    ))
    .await;
    app.wait_idle().await;
    app.wait_gone("notif_pdel").await;
    let first_segments = segment_files(&app);
    assert_eq!(first_segments.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A newer event, inside retention.
    assert_eq!(app.post_signed(&contact(99)).await.status(), 200);
    app.wait_final("notif_p99").await;
    // Contact 1 is written again: the expiry index still files it under its
    // first write, and it must outlive that.
    let update = notification(
        "notif_p1b",
        "contact.user.updated",
        json!({"type":"contact","id":"65f0c0ffee00000000000001","email":"zoe.example@example.org","updated_at":1767225700}),
        1767225700,
    );
    assert_eq!(app.post_signed(&update).await.status(), 200);
    app.wait_final("notif_p1b").await;

    let dry: Value = app
        .admin_post("/admin/purge", json!({"dry_run": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dry["dry_run"], true);
    // Three contacts, and the record kept of the contact.deleted
    // notification (erased once processed).
    assert_eq!(dry["removed"]["events"], 4, "{dry}");
    assert_eq!(dry["removed"]["contacts"], 2, "{dry}");
    assert_eq!(dry["removed"]["tombstones"], 1, "{dry}");
    assert_eq!(
        app.admin_get("/admin/events/notif_p0").await.status(),
        200,
        "dry run removed nothing"
    );
    assert_eq!(
        app.admin_get("/admin/contacts/65f0c0ffee00000000000000").await.status(),
        200
    );

    let done: Value = app.admin_post("/admin/purge", json!({})).await.json().await.unwrap();
    assert_eq!(done["removed"]["events"], 4, "{done}");
    assert_eq!(done["removed"]["contacts"], 2, "{done}");
    assert_eq!(done["removed"]["tombstones"], 1, "{done}");
    assert_eq!(
        done["removed"]["log_segments"], 1,
        "the closed, fully expired segment: {done}"
    );
    for n in 0..3 {
        assert_eq!(app.admin_get(&format!("/admin/events/notif_p{n}")).await.status(), 404);
    }
    assert_eq!(
        app.admin_get("/admin/events/notif_pdel").await.status(),
        404,
        "an erased record expires with the events of its time"
    );
    assert_eq!(
        app.admin_get("/admin/events/notif_p99").await.status(),
        200,
        "newer data stays"
    );
    for kept in ["65f0c0ffee00000000000099", "65f0c0ffee00000000000001"] {
        assert_eq!(
            app.admin_get(&format!("/admin/contacts/{kept}")).await.status(),
            200,
            "written inside retention: {kept}"
        );
    }

    // The old segment file is gone and its key slot is zeroed: whatever
    // lingers on disk cannot be decrypted.
    assert!(!segment_files(&app).contains(&first_segments[0]));
    let ring = std::fs::read(app.data_dir().join("keyring.bin")).unwrap();
    let seq = u64::from_str_radix(first_segments[0].trim_end_matches(".seg"), 16).unwrap() as usize;
    assert!(ring[seq * 128..seq * 128 + 128].iter().all(|&b| b == 0));

    // A late re-delivery of a purged id is still a duplicate and does not
    // re-enter the cache.
    assert_eq!(app.post_signed(&contact(0)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.admin_get("/admin/events/notif_p0").await.status(), 404);
    assert_eq!(
        app.admin_get("/admin/contacts/65f0c0ffee00000000000000").await.status(),
        404
    );

    // One audit entry for the run, nothing personal, chain intact.
    let audit = app.admin_json("/admin/audit").await;
    // (The contact.deleted notification left an `erase` entry before it.)
    let entries: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "purge")
        .collect();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["details"]["removed"]["events"], 4);
    assert!(
        !audit.to_string().contains("65f0c0ffee"),
        "no ids of people in the audit entry"
    );
    assert_eq!(app.admin_json("/admin/audit/verify").await["ok"], true);

    // Once their last writes expire, the contact written twice goes too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later: Value = app.admin_post("/admin/purge", json!({})).await.json().await.unwrap();
    assert_eq!(later["removed"]["contacts"], 2, "{later}");
    assert_eq!(
        app.admin_get("/admin/contacts/65f0c0ffee00000000000001").await.status(),
        404
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_purge_runs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SHORT.replace("interval = \"1h\"", "interval = \"300ms\"");
    let app = spawn_app_with(dir.path(), &cfg, test_env()).await;
    app.post_signed(&contact(1)).await;
    app.wait_final("notif_p1").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.admin_get("/admin/events/notif_p1").await.status() == 200 {
        assert!(std::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The open segment was closed and deleted too, once all of it expired.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !segment_files(&app).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "segment never deleted: {:?}",
            segment_files(&app)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The run's metrics are recorded once it has finished (after its audit entry).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app.metrics().await;
        if metrics.contains("intercom_webhooks_purged_total{class=\"events\"} 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_during_intake_loses_no_new_event() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SHORT
        .replace("events = \"1s\"", "events = \"5s\"")
        .replace("segment_max_age = \"1s\"", "segment_max_age = \"200ms\"");
    let app = std::sync::Arc::new(spawn_app_with(dir.path(), &cfg, test_env()).await);
    let purger = {
        let app = app.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                let r = app.admin_post("/admin/purge", json!({})).await;
                assert_eq!(r.status(), 200);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for n in 0..300 {
        assert_eq!(app.post_signed(&contact(1000 + n)).await.status(), 200);
    }
    purger.await.unwrap();
    app.wait_idle().await;
    for n in 0..300 {
        assert_eq!(
            app.admin_get(&format!("/admin/events/notif_p{}", 1000 + n))
                .await
                .status(),
            200,
            "event {n} lost"
        );
    }
    let app = std::sync::Arc::try_unwrap(app).ok().unwrap();
    app.stop().await;
}

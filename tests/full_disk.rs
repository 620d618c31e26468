//! A full disk: webhooks get `503` and `/readyz` says the store cannot take
//! writes; nothing is answered `200` that was not stored and nothing
//! acknowledged is lost; the receiver takes webhooks again on its own once
//! there is room, and its index never meets the full disk (it stops and
//! restarts cleanly). Needs a small filesystem of its own: a tmpfs mounted
//! for the test, which takes root (as CI runs). Built by another user, the
//! tests are reported as ignored with that reason (see `build.rs`).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, mib: u64) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bytes free on `dir`'s filesystem, as `stat -f` reports them.
fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut parts = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    parts.next().unwrap() * parts.next().unwrap()
}

fn body(n: usize) -> (String, Vec<u8>) {
    let id = format!("notif_full-{n}");
    let item = json!({"type":"contact","id":format!("65f0c0ffee000000000{n:05}"),"role":"user","updated_at":1767225600 + n,"custom_attributes":{"padding":"x".repeat(900)}});
    let b = notification(&id, "contact.user.updated", item, 1767225600);
    (id, b)
}

/// A temp dir with a tmpfs of `mib` MiB mounted at its `fs/`.
fn small_disk(mib: u64) -> (tempfile::TempDir, Mount, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fs");
    std::fs::create_dir(&dir).unwrap();
    let mount = Mount::tmpfs(&dir, mib)
        .expect("running as root, yet could not mount a tmpfs (a container without CAP_SYS_ADMIN?)");
    (tmp, mount, dir)
}

/// Stops cleanly (the index never met the full disk), starts again on the
/// same data dir and checks that every acknowledged id is stored with a
/// readable payload, and nothing else.
async fn restart_and_check(app: TestApp, dir: &Path, toml: &str, stored: &BTreeSet<String>) {
    app.wait_idle().await;
    app.stop().await;
    let app = spawn_app_with(dir, toml, test_env()).await;
    assert_stored_exactly(&app, stored).await;
    app.stop().await;
}

/// Every acknowledged id is stored with a readable payload, and nothing else.
async fn assert_stored_exactly(app: &TestApp, stored: &BTreeSet<String>) {
    for id in stored {
        let r = app.admin_get(&format!("/admin/events/{id}")).await;
        assert_eq!(r.status(), 200, "{id} was acknowledged but is not stored");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["payload"]["id"], id.as_str(), "{id}: payload not readable: {v}");
    }
    let stats = app.admin_json("/admin/stats").await;
    let total: u64 = stats["events_by_status"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(
        total,
        stored.len() as u64,
        "stored exactly what was acknowledged: {stats}"
    );
}

/// Waits, sending no webhook, until `/readyz` is 200 again.
async fn wait_ready_again(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.readyz().await != 200 {
        assert!(Instant::now() < deadline, "never ready again after space was freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(can_mount), ignore = "needs root: mounts a small tmpfs (CI runs as root)")]
async fn a_full_disk_gets_503_loses_nothing_and_recovers_on_its_own() {
    let (_tmp, _mount, dir) = small_disk(16);
    // Small segments, and 3 MiB kept free for the index.
    let toml = "[store]\nsegment_max_bytes = 262144\nmin_free_bytes = 3145728\n";
    let app = spawn_app_with(&dir, toml, test_env()).await;
    // Leave room for the reserve and about six more segments.
    let filler = dir.join("filler");
    let leave = 3 * 1024 * 1024 + 6 * 262_144;
    let fill = free_bytes(&dir).saturating_sub(leave);
    std::fs::write(&filler, vec![1u8; fill as usize]).unwrap();

    let mut stored = BTreeSet::new();
    let mut refused = 0;
    let mut n = 0;
    while refused < 5 {
        assert!(n < 5_000, "the disk never filled up: {} stored", stored.len());
        let (id, b) = body(n);
        n += 1;
        match app.post_signed(&b).await.status().as_u16() {
            200 => {
                stored.insert(id);
            }
            503 => refused += 1,
            other => panic!("{id}: answered {other} on a nearly full disk"),
        }
    }
    assert!(
        stored.len() > 100,
        "stored only {} before the disk was full",
        stored.len()
    );
    assert_eq!(app.readyz().await, 503, "not ready while nothing can be stored");
    // Still refused, promptly, and the metrics still answer.
    let started = Instant::now();
    assert_eq!(app.post_signed(&body(n).1).await.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a refusal took {:?}",
        started.elapsed()
    );
    assert!(app.metrics().await.contains("intercom_webhooks_http_requests"));

    // Room again: ready on its own, before any webhook comes.
    std::fs::remove_file(&filler).unwrap();
    wait_ready_again(&app).await;
    for _ in 0..50 {
        let (id, b) = body(n);
        n += 1;
        assert_eq!(app.post_signed(&b).await.status(), 200, "{id} after space was freed");
        stored.insert(id);
    }
    restart_and_check(app, &dir, toml, &stored).await;
}

/// Space already prepared does not let intake run the disk below the
/// reserve: the index grows with every event and must keep its room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(can_mount), ignore = "needs root: mounts a small tmpfs (CI runs as root)")]
async fn intake_stops_at_the_reserve_even_with_prepared_room() {
    let (_tmp, _mount, dir) = small_disk(24);
    // Segments far larger than what this test writes, 4 MiB kept free.
    let toml = "[store]\nsegment_max_bytes = 4194304\nmin_free_bytes = 4194304\n";
    let app = spawn_app_with(&dir, toml, test_env()).await;
    let mut stored = BTreeSet::new();
    for n in 0..20 {
        let (id, b) = body(n);
        assert_eq!(app.post_signed(&b).await.status(), 200);
        stored.insert(id);
    }
    // The open segment has room for thousands more; leave less than the
    // reserve free on the disk.
    let filler = dir.join("filler");
    let fill = free_bytes(&dir).saturating_sub(2 * 1024 * 1024);
    std::fs::write(&filler, vec![1u8; fill as usize]).unwrap();
    let mut n = 20;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (id, b) = body(n);
        n += 1;
        match app.post_signed(&b).await.status().as_u16() {
            200 => {
                stored.insert(id);
            }
            503 => break,
            other => panic!("{id}: answered {other}"),
        }
        assert!(Instant::now() < deadline, "never refused below the reserve");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.readyz().await, 503, "not ready below the reserve");
    // Room again: ready with no webhook sent, then taking them.
    std::fs::remove_file(&filler).unwrap();
    wait_ready_again(&app).await;
    let (id, b) = body(n);
    assert_eq!(app.post_signed(&b).await.status(), 200);
    stored.insert(id);
    restart_and_check(app, &dir, toml, &stored).await;
}

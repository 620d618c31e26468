use super::*;
use crate::crypto::DataKey;

fn open(dir: &Path) -> (Embedded, Recovery) {
    let key = DataKey::parse(&"5a".repeat(32)).unwrap();
    let settings = StoreSettings {
        segment_max_bytes: 64 * 1024 * 1024,
        segment_max_age: Duration::from_secs(3600),
        min_free_bytes: 0,
        shred_bytes_per_second: 0,
        postgres: None,
    };
    Embedded::open(dir, Keys::derive(&key), &settings).unwrap()
}

fn meta(key: &str) -> EventMeta {
    let mut m = EventMeta::received(now(), 2, Vec::new());
    m.key = key.into();
    m.notification_id = Some(key.into());
    m.topic = "conversation.user.replied".into();
    m.item_type = Some("conversation".into());
    m.item_id = Some("1".into());
    m.created_at = Some(1);
    m
}

fn now() -> i64 {
    crate::timefmt::now_ms()
}

fn take_fresh(store: &Embedded, n: usize) -> Vec<Fresh> {
    (0..n)
        .map(|_| {
            let w = store.work_queue().recv_timeout(Duration::from_secs(5)).unwrap();
            *w.fresh.expect("handed out fresh")
        })
        .collect()
}

/// A fresh event has no `pending` entry: if the process stops before
/// its outcome is recorded, the checkpoint must still lead recovery to
/// queue it again, and once recorded it must not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_events_are_queued_again_until_their_outcome_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    for i in 0..5 {
        let appended = store
            .append_if_absent(meta(&format!("k{i}")), Bytes::from_static(b"{}"))
            .await;
        assert!(matches!(appended, Ok(Appended::Stored)));
    }
    // A worker took them, then the process stopped (the checkpoint at
    // close stands for one taken at any moment in between).
    let taken = take_fresh(&store, 5);
    assert_eq!(store.pending_depth(), 5);
    store.close().unwrap();
    drop((store, taken));

    let (store, recovery) = open(dir.path());
    assert_eq!(recovery.pending, 5, "all five queued again");
    let keys: Vec<String> = (0..5)
        .map(|_| store.work_queue().recv_timeout(Duration::from_secs(5)).unwrap().key)
        .collect();
    assert_eq!(keys.len(), 5);
    // Now record outcomes, two of them for fresh events of a new batch.
    for k in &keys {
        let seen = store.snapshot(k).unwrap().unwrap();
        store.complete(&seen, &outcome(Status::Processed)).unwrap();
    }
    for i in 5..7 {
        store
            .append_if_absent(meta(&format!("k{i}")), Bytes::from_static(b"{}"))
            .await
            .unwrap();
    }
    let fresh = take_fresh(&store, 2);
    let retry = Completion {
        status: Status::Retrying,
        attempt: Attempt {
            at_ms: now(),
            outcome: "retrying".into(),
            error: Some("e".into()),
            duration_us: None,
        },
        retry_at_ms: Some(now() + 60_000),
    };
    for f in &fresh {
        // A retrying outcome must leave an entry to be found at start.
        store.complete(&f.seen, &retry).unwrap();
        store.fresh_finished(f.batch);
    }
    assert_eq!(store.pending_depth(), 2);
    store.close().unwrap();
    drop(store);

    let (store, recovery) = open(dir.path());
    assert_eq!(recovery.pending, 2, "only the two retrying");
    for i in 0..5 {
        assert_eq!(store.get(&format!("k{i}")).unwrap().unwrap().status, Status::Processed);
    }
    store.close().unwrap();
}

fn outcome(status: Status) -> Completion {
    Completion {
        status,
        attempt: Attempt {
            at_ms: now(),
            outcome: status.as_str().into(),
            error: None,
            duration_us: None,
        },
        retry_at_ms: None,
    }
}

/// The failed count (read at every metrics scrape) comes from its own
/// index, which follows every way in and out of `failed`, and is
/// rebuilt for a store that predates it.
/// A shred pass writes the surviving records at their offsets into a
/// new segment and leaves the index entries as they are: reads follow
/// the replacement, across passes and a reopening, and what an
/// interrupted pass leaves is removed at open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shredded_segments_are_replaced_and_reads_follow() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let body = |i: usize| Bytes::from(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(100 * i)));
    for i in 0..6 {
        let appended = store.append_if_absent(meta(&format!("k{i}")), body(i)).await;
        assert!(matches!(appended, Ok(Appended::Stored)));
    }
    // A `200` waits for the log, not the index: erase what is indexed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (0..6).any(|i| store.get(&format!("k{i}")).unwrap().is_none()) {
        assert!(std::time::Instant::now() < deadline, "indexed within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Handled, as workers would (a segment with fresh events not handled
    // yet is not rewritten).
    for f in take_fresh(&store, 6) {
        store.fresh_finished(f.batch);
    }
    let first = store.get("k0").unwrap().unwrap().loc.unwrap().seg;
    let read = |store: &Embedded, i: usize| {
        let m = store.get(&format!("k{i}")).unwrap().expect("still indexed");
        assert_eq!(m.loc.unwrap().seg, first, "index entries are not rewritten");
        store.read_body(&m).unwrap().expect("readable")
    };
    tokio::task::block_in_place(|| {
        store.erase_events(&["k1".into(), "k4".into()], true).unwrap();
        assert_eq!(store.shred().unwrap(), 1);
        let once = store.inner.shared.readers.resolve(first);
        assert_ne!(once, first);
        assert!(
            store.inner.shared.keyring.get(first).unwrap().is_none(),
            "old key destroyed"
        );
        assert!(!log::segment_path(&store.inner.log_dir, first).exists());
        for i in [0, 2, 3, 5] {
            assert_eq!(read(&store, i), body(i));
        }
        // A second pass replaces the replacement (first and last records).
        store.erase_events(&["k0".into(), "k5".into()], true).unwrap();
        assert_eq!(store.shred().unwrap(), 1);
        let twice = store.inner.shared.readers.resolve(first);
        assert!(twice != once && twice != first);
        assert!(store.inner.shared.keyring.get(once).unwrap().is_none());
        assert_eq!(read(&store, 2), body(2));
        assert_eq!(read(&store, 3), body(3));
        store.close().unwrap();
    });
    drop(store);
    // A replacement written but never recorded (the process stopped in
    // between) holds copies: it goes at open, and nothing else does.
    let log_dir = dir.path().join("log");
    let replacement = log::list_segments(&log_dir)
        .unwrap()
        .into_iter()
        .find(|s| log::rewritten_from(&log::segment_path(&log_dir, *s)).unwrap().is_some())
        .unwrap();
    log::create_rewrite(&log_dir, 999, replacement, now()).unwrap();
    let (store, _) = open(dir.path());
    assert!(
        !log::segment_path(&log_dir, 999).exists(),
        "the unrecorded replacement is gone"
    );
    assert_eq!(read(&store, 2), body(2));
    assert_eq!(read(&store, 3), body(3));
    for gone in ["k0", "k1", "k4", "k5"] {
        let kept = store.get(gone).unwrap().unwrap();
        assert_eq!(
            (kept.status, kept.loc),
            (Status::Erased, None),
            "only its erased record"
        );
        assert!(store.read_body(&kept).unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_events_are_counted_from_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    for i in 0..3 {
        store
            .append_if_absent(meta(&format!("f{i}")), Bytes::from_static(b"{}"))
            .await
            .unwrap();
    }
    let fresh = take_fresh(&store, 3);
    assert_eq!(store.failed_count().unwrap(), 0);
    store.complete(&fresh[0].seen, &outcome(Status::Failed)).unwrap();
    store.complete(&fresh[1].seen, &outcome(Status::Failed)).unwrap();
    store.complete(&fresh[2].seen, &outcome(Status::Processed)).unwrap();
    assert_eq!(store.failed_count().unwrap(), 2);
    // A replay takes one out of `failed`...
    store.update("f0", |m| m.status = Status::Pending).unwrap();
    assert_eq!(store.failed_count().unwrap(), 1);
    // ...and a purge the other, index entry included.
    let received = store.get("f1").unwrap().unwrap().received_ms;
    assert!(store.purge_event(received, "f1").unwrap());
    assert_eq!(store.failed_count().unwrap(), 0);
    assert!(store.inner.trees.failed.is_empty());
    let seen = store.snapshot("f0").unwrap().unwrap();
    store.complete(&seen, &outcome(Status::Failed)).unwrap();
    assert_eq!(store.failed_count().unwrap(), 1);
    // A store from before the index: rebuilt when opened.
    store.inner.trees.failed.clear().unwrap();
    store.inner.trees.state.remove(FAILED_INDEXED).unwrap();
    store.close().unwrap();
    drop(store);
    let (store, _) = open(dir.path());
    assert_eq!(store.failed_count().unwrap(), 1);
    store.close().unwrap();
}

/// A shred pass that runs while a record is acknowledged (durable in the
/// log) but not in the index yet keeps it: the rewrite waits for the
/// indexer instead of taking the record for an erased one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shred_keeps_what_is_acknowledged_but_not_indexed_yet() {
    use super::indexer::tests_pause::PAUSED;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let appended = store
        .append_if_absent(meta("gone"), Bytes::from_static(b"{\"erased\":1}"))
        .await;
    assert!(matches!(appended, Ok(Appended::Stored)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.get("gone").unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "never indexed");
        std::thread::sleep(Duration::from_millis(5));
    }
    for f in take_fresh(&store, 1) {
        store.fresh_finished(f.batch);
    }
    // Queues the open segment, as every `contact.deleted` does.
    store.erase_events(&["gone".to_string()], true).unwrap();
    PAUSED.store(true, std::sync::atomic::Ordering::SeqCst);
    let late = store
        .append_if_absent(meta("late"), Bytes::from_static(b"{\"kept\":1}"))
        .await;
    assert!(matches!(late, Ok(Appended::Stored)), "acknowledged");
    assert!(store.get("late").unwrap().is_none(), "not indexed yet");
    let worker = store.clone();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        PAUSED.store(false, std::sync::atomic::Ordering::SeqCst);
        // A worker handles it once indexed.
        for f in take_fresh(&worker, 1) {
            worker.fresh_finished(f.batch);
        }
    });
    let shredder = store.clone();
    let rewritten = tokio::task::spawn_blocking(move || shredder.shred()).await.unwrap();
    release.join().unwrap();
    assert_eq!(rewritten.unwrap(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        if let Some(m) = store.get("late").unwrap() {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "never indexed");
        std::thread::sleep(Duration::from_millis(5));
    };
    let body = store.read_body(&m).unwrap();
    assert_eq!(
        body.as_deref(),
        Some(&b"{\"kept\":1}"[..]),
        "the acknowledged record survived the rewrite"
    );
    store.close().unwrap();
}

/// An outcome recorded after its event was erased (a handler under way as
/// the erasure ran) leaves the erased record as it is, and so does a
/// duplicate delivery but for its count; the record is not queued, failed
/// or found under its subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_outcome_undoes_an_erasure() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let mut m = meta("k_erased");
    m.subjects = vec!["c_someone".into()];
    m.item_id = Some("c_someone".into());
    store.append_if_absent(m, Bytes::from_static(b"{}")).await.unwrap();
    let fresh = take_fresh(&store, 1);
    tokio::task::block_in_place(|| {
        assert_eq!(store.erase_events(&["k_erased".into()], true).unwrap().events, 1);
        assert_eq!(
            store.erase_events(&["k_erased".into()], true).unwrap().events,
            0,
            "counted once"
        );
        for status in [Status::Processed, Status::Failed, Status::Retrying] {
            assert!(store.complete(&fresh[0].seen, &outcome(status)).unwrap().is_none());
        }
        store.fresh_finished(fresh[0].batch);
        store.note_duplicate("k_erased", now()).unwrap();
        let kept = store.get("k_erased").unwrap().unwrap();
        assert_eq!(kept.status, Status::Erased);
        assert_eq!(
            (kept.item_id.as_deref(), kept.subjects.len(), kept.loc),
            (None, 0, None)
        );
        assert_eq!(kept.delivery_count, 2);
        assert!(kept.erased_ms().is_some());
        assert_eq!(store.pending_depth(), 0);
        assert_eq!(store.failed_count().unwrap(), 0);
        assert!(store.events_for_subject("c_someone").unwrap().is_empty());
        store.close().unwrap();
    });
}

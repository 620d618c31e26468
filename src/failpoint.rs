//! Crash and pause points for tests of the real binary: a test names a
//! point in `INTERCOM_WEBHOOKS_TEST_CRASH_AT` (the process SIGKILLs itself
//! when it gets there) or in `INTERCOM_WEBHOOKS_TEST_PAUSE_AT` as
//! `name=ms` (it sleeps there), comma-separated. Debug builds only (what
//! `cargo test` runs); in a release build [`hit`] is empty.
//!
//! The points sit between the steps of a change that a crash must not
//! leave half-done (see `docs/privacy.md`, "After a crash").

/// Passes the point `name`: crashes or pauses there if a test asked.
pub fn hit(name: &str) {
    hit_settled(name, || {});
}

/// [`hit`], where a crash first runs `settle` (say, makes every write so
/// far durable): the worst moment to die is when all before it is on disk
/// and nothing after it is.
pub fn hit_settled(name: &str, settle: impl FnOnce()) {
    #[cfg(debug_assertions)]
    debug::hit(name, settle);
    #[cfg(not(debug_assertions))]
    let _ = (name, settle);
}

#[cfg(debug_assertions)]
mod debug {
    use std::sync::OnceLock;

    fn list(var: &str) -> Vec<String> {
        std::env::var(var)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn hit(name: &str, settle: impl FnOnce()) {
        static CRASH: OnceLock<Vec<String>> = OnceLock::new();
        static PAUSE: OnceLock<Vec<(String, u64)>> = OnceLock::new();
        let pause = PAUSE.get_or_init(|| {
            list("INTERCOM_WEBHOOKS_TEST_PAUSE_AT")
                .into_iter()
                .filter_map(|p| {
                    let (n, ms) = p.split_once('=')?;
                    Some((n.to_string(), ms.parse().ok()?))
                })
                .collect()
        });
        if let Some((_, ms)) = pause.iter().find(|(n, _)| n == name) {
            tracing::trace!(point = name, ms, "Test pause point.");
            std::thread::sleep(std::time::Duration::from_millis(*ms));
        }
        if CRASH
            .get_or_init(|| list("INTERCOM_WEBHOOKS_TEST_CRASH_AT"))
            .iter()
            .any(|n| n == name)
        {
            settle();
            eprintln!("test crash point {name}: killing the process");
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
            std::process::abort();
        }
    }
}

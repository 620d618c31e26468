//! Tells the tests what this machine can do, so that a test that cannot run
//! here is reported as ignored with its reason, never as passed:
//! - `can_mount`: the full-disk tests mount a small tmpfs, which takes root;
//! - `has_chromium`: the console's browser tests drive Debian's `chromium`
//!   through `chromedriver` (packages chromium and chromium-driver; `.ci/run`
//!   installs them);
//! - `has_postgres`: the PostgreSQL backend's tests need a server on
//!   127.0.0.1:5432 (`.ci/run` starts the local one if it is stopped), and
//!   `initdb`/`pg_ctl` for the ones that run clusters of their own.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(can_mount)");
    println!("cargo::rustc-check-cfg=cfg(has_chromium)");
    println!("cargo::rustc-check-cfg=cfg(has_postgres)");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-changed=build.rs");
    // Installing the packages changes /usr/bin: look again then.
    println!("cargo::rerun-if-changed=/usr/bin");
    if effective_uid() == Some(0) {
        println!("cargo::rustc-cfg=can_mount");
    }
    if ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| std::path::Path::new(p).exists())
    {
        println!("cargo::rustc-cfg=has_chromium");
    }
    // Under CI the tests must run: a server that is not there fails them.
    let reachable = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], 5432)),
        std::time::Duration::from_millis(500),
    )
    .is_ok();
    if reachable || std::env::var("CI").is_ok_and(|v| v == "true") {
        println!("cargo::rustc-cfg=has_postgres");
    }
}

/// The effective user id, from `/proc/self/status` (`Uid: real effective ...`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

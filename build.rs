//! Tells the tests what this machine can do, so that a test that cannot run
//! here is reported as ignored with its reason, never as passed:
//! - `can_mount`: the full-disk tests mount a small tmpfs, which takes root;
//! - `has_chromium`: the console's browser tests drive Debian's `chromium`
//!   through `chromedriver` (packages chromium and chromium-driver; `.ci/run`
//!   installs them).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(can_mount)");
    println!("cargo::rustc-check-cfg=cfg(has_chromium)");
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
}

/// The effective user id, from `/proc/self/status` (`Uid: real effective ...`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

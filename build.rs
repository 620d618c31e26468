//! Tells the tests whether they may mount a filesystem: the full-disk tests
//! mount a small tmpfs, which takes root. Built as another user, they are
//! reported as ignored (with the reason), never as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(can_mount)");
    println!("cargo::rerun-if-changed=build.rs");
    if effective_uid() == Some(0) {
        println!("cargo::rustc-cfg=can_mount");
    }
}

/// The effective user id, from `/proc/self/status` (`Uid: real effective ...`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

//! Owner-only files: key files, exports and backups are created mode 0600,
//! and files that must never be half-written are replaced atomically.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Opens `path` for writing, readable by its owner only (0600). With
/// `create_new` it fails if the file exists; otherwise it is truncated.
pub fn private_file(path: &Path, create_new: bool) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// Replaces `path` with `bytes` atomically: a 0600 temp file beside it,
/// fsync, rename over, fsync of the directory.
pub fn replace_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = private_file(&tmp, false)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

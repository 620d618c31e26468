//! Owner-only files: key files, exports and backups are created mode 0600,
//! the data dir and its folders 0700, and files that must never be
//! half-written are replaced atomically.

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

/// Opens `path` for appending, creating it owner-only (0600) if needed.
pub fn private_append(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// A file with no name in `dir` (`O_TMPFILE`), readable and writable by
/// this process only: it disappears with its last handle, crash or not.
pub fn unnamed_private_file(dir: &Path) -> std::io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// Opens `path` for an operator's output (`--out`): refuses an existing
/// path, a symlink included, unless `force`; always creates a new file
/// with mode 0600 (an existing one is replaced by rename, never written
/// through, so neither its mode nor a link's target is kept).
pub fn create_out(path: &Path, force: bool) -> std::io::Result<(File, OutFile)> {
    if std::fs::symlink_metadata(path).is_ok() && !force {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "it exists (a file or a link): give --force to replace it",
        ));
    }
    let tmp = path.with_file_name(format!(
        ".{}.partial",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    let file = private_file(&tmp, true)?;
    Ok((
        file,
        OutFile {
            tmp,
            path: path.to_path_buf(),
        },
    ))
}

/// An output being written; [`OutFile::finish`] moves it into place.
pub struct OutFile {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl OutFile {
    /// Syncs and renames the finished file over the destination.
    pub fn finish(self, file: File) -> std::io::Result<()> {
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        // Unfinished (an error on the way): no partial output is left.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Creates `dir` and any missing parents accessible to their owner only
/// (0700), whatever the umask; folders that exist are left as they are.
/// The data dir holds only encrypted payloads, but also sled's index (ids,
/// statuses, times): nobody else on the machine needs to list or read it.
pub fn private_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
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

/// Everything this process writes is its owner's only (log segments, sled's
/// files, exports, backups), whatever umask it was started with: the bits
/// already masked stay masked.
pub fn owner_only_umask() {
    let mask = rustix::fs::Mode::from_raw_mode(0o077);
    rustix::process::umask(rustix::process::umask(mask) | mask);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_dirs_are_owner_only_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        private_dir_all(&dir).unwrap();
        for d in [tmp.path().join("a"), dir.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        // An existing folder is left as it is.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        private_dir_all(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o750);
    }
}

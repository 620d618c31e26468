//! The segment files themselves: made ahead and zero-filled, written over
//! by the committer a page at a time, rewritten by a shred pass at a pace,
//! and freed a step at a time.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::*;

/// The page size the committer pads its writes to (see `pad_to_page`).
pub const PAGE: u64 = 4096;
/// One direct write of the zero-fill: long enough to keep the preparer
/// cheap, short enough that an intake `fdatasync` queued behind it on the
/// same disk waits for little.
pub(super) const DIRECT_CHUNK: usize = 128 * 1024;

/// Zeros in a buffer aligned as `O_DIRECT` requires.
#[repr(C, align(4096))]
struct AlignedZeros([u8; DIRECT_CHUNK]);

/// Creates segment `seq`, `size` bytes long: its header, then zeros, made
/// durable (file and directory). Records are later written over the zeros,
/// so an append never changes the file's size and its `fdatasync` flushes
/// data only: a size change also writes the inode, which waits behind any
/// other writer of the same inode table block (sled's checkpoint fsyncs
/// stalled appends by 20-150 ms that way). A disk too full for the whole
/// segment fails here, before anything is acknowledged into it. A failed
/// creation leaves no file.
///
/// The zeros go straight to the disk (`O_DIRECT`), not through the page
/// cache: copying them there cost a tenth of the server's CPU at full
/// intake, and flushing them queued megabytes ahead of intake's
/// `fdatasync`s. Where the filesystem refuses direct I/O (tmpfs), they are
/// written through the page cache instead.
pub fn create_segment(dir: &Path, seq: u64, now_ms: i64, size: u64) -> std::io::Result<File> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    let made = (|| {
        let direct_end = match zero_fill_direct(&path, size) {
            Ok(end) => end,
            Err(e) => {
                tracing::debug!(segment = seq, error = %e, "No direct I/O for the zero-fill; using the page cache.");
                0
            }
        };
        zero_fill_buffered(&file, direct_end, size)?;
        let header = header(seq, now_ms);
        // Through the page cache, which also leaves the first page there for
        // the committer's first write (see `pad_to_page`).
        file.write_all_at(&header, 0)?;
        file.sync_all()?;
        sync_dir(dir)
    })();
    match made {
        Ok(()) => Ok(file),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Writes zeros over the whole pages of `[0, size)` with direct I/O;
/// returns where they end. Made durable by the caller's `sync_all`.
fn zero_fill_direct(path: &Path, size: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)?;
    let zeros = Box::new(AlignedZeros([0; DIRECT_CHUNK]));
    let end = size / PAGE * PAGE;
    let mut at = 0;
    while at < end {
        let n = (end - at).min(DIRECT_CHUNK as u64) as usize;
        direct.write_all_at(&zeros.0[..n], at)?;
        at += n as u64;
    }
    Ok(end)
}

/// Writes zeros over `[from, size)` through the page cache.
pub(super) fn zero_fill_buffered(file: &File, from: u64, size: u64) -> std::io::Result<()> {
    // Small writes keep the page cache in small folios: a large one (the
    // kernel sizes them by the write) would be written out whole at each
    // later fdatasync of a few bytes in it (1 MiB writes: 600 MB written for
    // 23 MB of records; 16 KiB: 35 MB). Flushing every few MiB keeps this
    // from queueing one burst ahead of intake's fdatasyncs on the same disk.
    let zeros = [0u8; 16 * 1024];
    let mut at = from;
    while at < size {
        let n = (size - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
        if at % (4 << 20) < n as u64 {
            file.sync_data()?;
        }
    }
    Ok(())
}

/// Pads a batch of records that starts at `start` in `buf` with zeros up
/// to the next page boundary, but not past the segment's prepared `size`;
/// the caller writes it all and counts only the records. The pages the
/// zero-fill wrote directly are not in the page cache, and a buffered
/// write that ends mid-page in such a page first reads the page back from
/// the disk, on the way to a `200`. Padded, each write covers its last page
/// whole, and the next batch starts in a page that is cached. Zeros over
/// zeros: the file's content is the same.
pub fn pad_to_page(buf: &mut Vec<u8>, start: u64, size: u64) {
    let end = start + buf.len() as u64;
    let padded = end.next_multiple_of(PAGE).min(size.max(end));
    buf.resize(buf.len() + (padded - end) as usize, 0);
}

/// Makes segment `seq` to replace segment `from` (a shred pass): the
/// header only, synced; the caller writes the records.
pub fn create_rewrite(dir: &Path, seq: u64, from: u64, now_ms: i64) -> std::io::Result<File> {
    let file = create_segment(dir, seq, now_ms, HEADER_LEN)?;
    file.write_all_at(&(from + 1).to_le_bytes(), 24)?;
    file.sync_all()?;
    Ok(file)
}

/// How fast a background pass may go through segment files: `step` bytes
/// at a time, at most `bytes_per_second` on average (0: no limit).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub step: usize,
    pub bytes_per_second: u64,
}

impl Pace {
    /// Calls `f` with the start of each step of `len` bytes, waiting
    /// between steps so that the average stays at the pace.
    fn steps(&self, len: usize, mut f: impl FnMut(usize, usize) -> std::io::Result<()>) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(self.step);
            f(at, n)?;
            at += n;
            if self.bytes_per_second > 0 {
                let due = started + std::time::Duration::from_secs_f64(at as f64 / self.bytes_per_second as f64);
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
        }
        Ok(())
    }
}

/// Writes `records` after the header of the segment at `path` (made by
/// [`create_rewrite`]) at `pace`, then makes it durable with one
/// `fdatasync`. With direct I/O where the file
/// system has it: the bytes go to the disk as they are written, so no
/// writeback piles up in the page cache for a later flush (which intake's
/// `fdatasync`s would queue behind); the last page is padded with zeros.
pub fn write_rewrite(path: &Path, records: &[u8], pace: Pace) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let step = pace.step.next_multiple_of(PAGE as usize);
    let pace = Pace { step, ..pace };
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path);
    let Ok(direct) = direct else {
        // No direct I/O here (tmpfs): through the page cache.
        let file = OpenOptions::new().write(true).open(path)?;
        pace.steps(records.len(), |at, n| {
            file.write_all_at(&records[at..at + n], HEADER_LEN + at as u64)
        })?;
        return file.sync_data();
    };
    let mut header = [0u8; HEADER_LEN as usize];
    File::open(path)?.read_exact_at(&mut header, 0)?;
    let total = (HEADER_LEN as usize + records.len()).next_multiple_of(PAGE as usize);
    // A buffer aligned to a page, as direct I/O requires.
    let mut raw = vec![0u8; step + PAGE as usize];
    let skew = raw.as_ptr().align_offset(PAGE as usize);
    let buf = &mut raw[skew..skew + step];
    pace.steps(total, |at, n| {
        let chunk = &mut buf[..n];
        chunk.fill(0);
        // The file's bytes [at, at + n): header, records, zeros.
        let h = HEADER_LEN as usize;
        if at < h {
            let k = (h - at).min(n);
            chunk[..k].copy_from_slice(&header[at..at + k]);
        }
        let from = at.max(h);
        if from < h + records.len() && from < at + n {
            let to = (at + n).min(h + records.len());
            chunk[from - at..to - at].copy_from_slice(&records[from - h..to - h]);
        }
        direct.write_all_at(chunk, at as u64)
    })?;
    direct.sync_data()
}

/// Removes a segment file (whose key is already destroyed) a step at a
/// time from its end, each step made durable, then the file: on a file
/// system mounted with `discard`, freeing a whole segment at once sends
/// the disk one large discard that holds it for tens of milliseconds, and
/// intake's `fdatasync`s wait behind it. Gone already is not an error.
pub fn remove_gradually(path: &Path, step: u64, pause: std::time::Duration) -> std::io::Result<()> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut len = file.metadata()?.len();
    while len > step {
        len -= step;
        file.set_len(len)?;
        file.sync_all()?;
        std::thread::sleep(pause);
    }
    drop(file);
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The segment a shred pass wrote `path` to replace, if it did.
pub fn rewritten_from(path: &Path) -> std::io::Result<Option<u64>> {
    let mut word = [0u8; 8];
    match File::open(path)?.read_exact_at(&mut word, 24) {
        Ok(()) => Ok(u64::from_le_bytes(word).checked_sub(1)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// [`scan`] for a background pass: reads the file at `pace`. A pass that
/// read whole segments at once would hold the disk: the block layer serves
/// reads before writes, and intake's `200`s wait on a write.
pub fn scan_paced(path: &Path, cipher: &SegmentCipher, seq: u64, pace: Pace) -> Result<ScanResult, LogError> {
    let file = File::open(path)?;
    let mut data = vec![0u8; file.metadata()?.len() as usize];
    let len = data.len();
    pace.steps(len, |at, n| file.read_exact_at(&mut data[at..at + n], at as u64))?;
    scan_bytes(&data, cipher, seq, 0)
}

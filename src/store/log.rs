//! The intake log's file format. A segment is `log/<seq:016x>.seg`:
//!
//! ```text
//! header (32 bytes): "IWLOG\0\0\x01" | seq u64 LE | created unix ms u64 LE | from u64 LE
//! record:            len u32 LE | crc32 u32 LE | ciphertext (len bytes)
//! ```
//!
//! `from` is 0 in a segment written by intake; in one written by a shred
//! pass (see `erasure.rs`) it is 1 + the number of the segment it replaces,
//! whose surviving records it holds at the same offsets, the gaps the
//! erased ones left taken by filler records (plaintext: `u32::MAX LE`, then
//! zeros), so the file still reads from start to end.
//!
//! The ciphertext is ChaCha20-Poly1305 under the segment's own key (see
//! `keyring`), the record's offset as nonce and the segment number as
//! associated data. Its plaintext is `meta_len u32 LE | EventMeta (see
//! `event`; JSON in the first releases) | raw body`, so the sled index can be rebuilt from the log alone. The CRC
//! tells a torn tail (crash mid-write) from a record that does not decrypt
//! (wrong key, tampering) without needing the key.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::crypto::SegmentCipher;

use super::event::EventMeta;

pub const HEADER_LEN: u64 = 32;
const MAGIC: &[u8; 8] = b"IWLOG\0\0\x01";
const FRAME_LEN: u64 = 8;
/// No record is larger (a body limit far above Intercom's payloads).
pub const MAX_RECORD: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("intake log i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("intake log record at segment {seg} offset {off} is damaged")]
    Corrupt { seg: u64, off: u64 },
    #[error("intake log record at segment {seg} offset {off} does not decrypt")]
    Decrypt { seg: u64, off: u64 },
}

/// A little-endian u32 from the 4 bytes at `at` (callers check the length).
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.seg"))
}

/// Segment numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".seg") {
            if let Ok(seq) = u64::from_str_radix(stem, 16) {
                seqs.push(seq);
            }
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// The page size the committer pads its writes to (see `pad_to_page`).
pub const PAGE: u64 = 4096;
/// One direct write of the zero-fill: long enough to keep the preparer
/// cheap, short enough that an intake `fdatasync` queued behind it on the
/// same disk waits for little.
const DIRECT_CHUNK: usize = 128 * 1024;

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
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&seq.to_le_bytes());
        header[16..24].copy_from_slice(&(now_ms.max(0) as u64).to_le_bytes());
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
fn zero_fill_buffered(file: &File, from: u64, size: u64) -> std::io::Result<()> {
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

/// Whether a segment holds no record (only its header and zeros): a
/// segment prepared ahead and never written to.
pub fn is_unused(path: &Path) -> std::io::Result<bool> {
    let file = File::open(path)?;
    let mut first = [0u8; FRAME_LEN as usize];
    match file.read_exact_at(&mut first, HEADER_LEN) {
        Ok(()) => Ok(first.iter().all(|&b| b == 0)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
        Err(e) => Err(e),
    }
}

/// Bytes an unprivileged process may still write on `dir`'s filesystem.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Appends the record of an event (its metadata as at intake, then the raw
/// body) for offset `off` to `out`; returns its length on disk.
pub fn frame_event(
    cipher: &SegmentCipher,
    seq: u64,
    off: u64,
    meta: &EventMeta,
    body: &[u8],
    out: &mut Vec<u8>,
) -> u32 {
    let meta = meta.encode();
    frame_record(
        cipher,
        seq,
        off,
        &[&(meta.len() as u32).to_le_bytes(), &meta, body],
        out,
    )
}

pub fn split_plaintext(plain: &[u8]) -> Option<(EventMeta, &[u8])> {
    let len = u32::from_le_bytes(plain.get(..4)?.try_into().ok()?) as usize;
    let bytes = plain.get(4..4 + len)?;
    let meta = match bytes.first() {
        // The first releases wrote the metadata as bare JSON.
        Some(b'{') => serde_json::from_slice(bytes).ok()?,
        _ => EventMeta::decode(bytes)?,
    };
    Some((meta, &plain[4 + len..]))
}

/// Appends one framed, encrypted record whose plaintext is `parts` joined,
/// for offset `off`, to `out` (encrypted where it lies: one copy of the
/// plaintext in all); returns the record's total length on disk.
pub fn frame_record(cipher: &SegmentCipher, seq: u64, off: u64, parts: &[&[u8]], out: &mut Vec<u8>) -> u32 {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN as usize]);
    for p in parts {
        out.extend_from_slice(p);
    }
    let tag = cipher.encrypt_in_place(off, &seq.to_le_bytes(), &mut out[start + FRAME_LEN as usize..]);
    out.extend_from_slice(&tag);
    let ct = &out[start + FRAME_LEN as usize..];
    let (ct_len, crc) = (ct.len() as u32, crc32fast::hash(ct));
    out[start..start + 4].copy_from_slice(&ct_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    FRAME_LEN as u32 + ct_len
}

/// The smallest record: the frame, a filler's marker and the tag.
pub const MIN_RECORD: u64 = FRAME_LEN + 4 + 16;
const FILLER: [u8; 4] = u32::MAX.to_le_bytes();

/// Appends filler records covering exactly `len` bytes from `off`
/// (`len` is 0 or at least [`MIN_RECORD`]).
pub fn frame_filler(cipher: &SegmentCipher, seq: u64, mut off: u64, mut len: u64, out: &mut Vec<u8>) {
    let max = u64::from(MAX_RECORD);
    while len > 0 {
        let n = if len <= max {
            len
        } else if len - max >= MIN_RECORD {
            max
        } else {
            max - MIN_RECORD
        };
        let zeros = vec![0u8; (n - MIN_RECORD) as usize];
        frame_record(cipher, seq, off, &[&FILLER, &zeros], out);
        off += n;
        len -= n;
    }
}

/// Whether a record's plaintext is a filler (see the module docs).
pub fn is_filler(plain: &[u8]) -> bool {
    plain.starts_with(&FILLER)
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

/// Reads and decrypts the record at `off` (whose framed length is `len`).
pub fn read_record(file: &File, cipher: &SegmentCipher, seq: u64, off: u64, len: u32) -> Result<Vec<u8>, LogError> {
    if u64::from(len) < FRAME_LEN {
        return Err(LogError::Corrupt { seg: seq, off });
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, off)?;
    let ct_len = u64::from(le_u32(&buf, 0));
    let crc = le_u32(&buf, 4);
    let ct = &buf[FRAME_LEN as usize..];
    if ct_len != ct.len() as u64 || crc32fast::hash(ct) != crc {
        return Err(LogError::Corrupt { seg: seq, off });
    }
    cipher
        .decrypt(off, &seq.to_le_bytes(), ct)
        .map_err(|_| LogError::Decrypt { seg: seq, off })
}

/// One record found by [`scan`].
pub struct Scanned {
    pub off: u64,
    pub len: u32,
    pub plain: Vec<u8>,
}

pub struct ScanResult {
    pub records: Vec<Scanned>,
    /// End of the last whole record: where a torn tail starts.
    pub good_end: u64,
    pub file_len: u64,
    /// Everything after `good_end` is zeros: space prepared for records,
    /// not a torn one.
    pub zero_tail: bool,
}

/// Reads every whole record of a segment from `from` on. Stops at the first
/// record that is incomplete or fails its CRC (a torn tail); a record with a
/// good CRC that does not decrypt is an error (wrong key or tampering).
pub fn scan(path: &Path, cipher: &SegmentCipher, seq: u64, from: u64) -> Result<ScanResult, LogError> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    scan_bytes(&data, cipher, seq, from)
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

fn scan_bytes(data: &[u8], cipher: &SegmentCipher, seq: u64, from: u64) -> Result<ScanResult, LogError> {
    let file_len = data.len() as u64;
    let mut off = from.max(HEADER_LEN);
    let mut records = Vec::new();
    if data.len() < HEADER_LEN as usize || &data[..8] != MAGIC {
        return Ok(ScanResult {
            records,
            good_end: HEADER_LEN.min(file_len),
            file_len,
            zero_tail: false,
        });
    }
    while off + FRAME_LEN <= file_len {
        let o = off as usize;
        let ct_len = le_u32(data, o);
        let crc = le_u32(data, o + 4);
        let end = off + FRAME_LEN + u64::from(ct_len);
        if ct_len == 0 || ct_len > MAX_RECORD || end > file_len {
            break;
        }
        let ct = &data[o + 8..end as usize];
        if crc32fast::hash(ct) != crc {
            break;
        }
        let plain = cipher
            .decrypt(off, &seq.to_le_bytes(), ct)
            .map_err(|_| LogError::Decrypt { seg: seq, off })?;
        records.push(Scanned {
            off,
            len: (end - off) as u32,
            plain,
        });
        off = end;
    }
    let zero_tail = data.get(off as usize..).is_none_or(|t| t.iter().all(|&b| b == 0));
    Ok(ScanResult {
        records,
        good_end: off,
        file_len,
        zero_tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::random_key;

    /// A paced pass goes no faster than its pace, and reads every byte.
    #[test]
    fn a_paced_scan_keeps_to_its_pace() {
        let dir = tempfile::tempdir().unwrap();
        let cipher = SegmentCipher::new(&random_key());
        let file = create_rewrite(dir.path(), 9, 1, 1).unwrap();
        let mut buf = Vec::new();
        let len = frame_record(&cipher, 9, HEADER_LEN, &[&vec![7u8; 1 << 20]], &mut buf);
        write_rewrite(
            &segment_path(dir.path(), 9),
            &buf,
            Pace {
                step: 64 << 10,
                bytes_per_second: 0,
            },
        )
        .unwrap();
        drop(file);
        let pace = Pace {
            step: 64 << 10,
            bytes_per_second: 4 << 20,
        };
        let started = std::time::Instant::now();
        let scan = scan_paced(&segment_path(dir.path(), 9), &cipher, 9, pace).unwrap();
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(240),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.records[0].len, len);
        assert_eq!(scan.records[0].plain, vec![7u8; 1 << 20]);
    }

    /// Fillers take exactly the gap they are given, and a scan reads
    /// through them to the records after.
    #[test]
    fn fillers_cover_gaps_and_scan_reads_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let cipher = SegmentCipher::new(&random_key());
        let file = create_rewrite(dir.path(), 7, 3, 1).unwrap();
        let mut buf = Vec::new();
        frame_filler(&cipher, 7, HEADER_LEN, MIN_RECORD, &mut buf);
        assert_eq!(buf.len() as u64, MIN_RECORD);
        frame_filler(&cipher, 7, HEADER_LEN + MIN_RECORD, 1000, &mut buf);
        assert_eq!(buf.len() as u64, MIN_RECORD + 1000);
        let off = HEADER_LEN + buf.len() as u64;
        let len = frame_record(&cipher, 7, off, &[b"live"], &mut buf);
        file.write_all_at(&buf, HEADER_LEN).unwrap();
        let path = segment_path(dir.path(), 7);
        assert_eq!(rewritten_from(&path).unwrap(), Some(3));
        let scan = scan(&path, &cipher, 7, 0).unwrap();
        let fillers = scan.records.iter().filter(|r| is_filler(&r.plain)).count();
        assert_eq!(fillers, 2);
        let last = scan.records.last().unwrap();
        assert_eq!((last.off, last.len, last.plain.as_slice()), (off, len, &b"live"[..]));
        assert_eq!(scan.good_end, off + u64::from(len));
    }

    /// Direct zero-fill (whole pages) plus the buffered rest and the
    /// header give the same file as before: full size, header, zeros.
    #[test]
    fn segments_are_made_full_size_with_header_and_zeros() {
        let dir = tempfile::tempdir().unwrap();
        for (seq, size) in [(1, 4096), (2, 3 * DIRECT_CHUNK as u64 + 5000), (3, 10_000)] {
            create_segment(dir.path(), seq, 1234, size).unwrap();
            let data = std::fs::read(segment_path(dir.path(), seq)).unwrap();
            assert_eq!(data.len() as u64, size);
            assert_eq!(&data[..8], MAGIC);
            assert_eq!(data[8..16], seq.to_le_bytes());
            assert_eq!(data[16..24], 1234u64.to_le_bytes());
            assert!(
                data[24..].iter().all(|&b| b == 0),
                "segment {seq}: zeros after the header"
            );
        }
        // A failed creation leaves no file.
        assert!(create_segment(dir.path(), 1, 0, 4096).is_err());
        assert_eq!(list_segments(dir.path()).unwrap(), vec![1, 2, 3]);
    }

    /// The fallback where direct I/O is refused writes the same zeros.
    #[test]
    fn buffered_zero_fill_covers_exactly_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0xAB; 40_000]).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        zero_fill_buffered(&file, 100, 40_000).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert!(data[..100].iter().all(|&b| b == 0xAB));
        assert!(data[100..].iter().all(|&b| b == 0));
    }

    #[test]
    fn batches_are_padded_to_a_page_within_the_segment() {
        let mut buf = vec![7u8; 100];
        pad_to_page(&mut buf, HEADER_LEN, 1 << 20);
        assert_eq!(buf.len() as u64, PAGE - HEADER_LEN, "to the end of the first page");
        assert!(buf[100..].iter().all(|&b| b == 0) && buf[..100].iter().all(|&b| b == 7));
        // Already on a boundary: nothing added.
        let mut buf = vec![1u8; 4096];
        pad_to_page(&mut buf, PAGE, 1 << 20);
        assert_eq!(buf.len(), 4096);
        // Never past the prepared size, nor cut below the records.
        let mut buf = vec![1u8; 10];
        pad_to_page(&mut buf, 5000, 5020);
        assert_eq!(buf.len(), 20);
        let mut buf = vec![1u8; 100];
        pad_to_page(&mut buf, 5000, 5020);
        assert_eq!(buf.len(), 100);
    }

    #[test]
    fn write_scan_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let cipher = SegmentCipher::new(&random_key());
        let f = create_segment(dir.path(), 7, 1000, 4096).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4096, "made full size up front");
        let path = segment_path(dir.path(), 7);
        assert!(is_unused(&path).unwrap());
        let empty = scan(&path, &SegmentCipher::new(&random_key()), 7, 0).unwrap();
        assert!(empty.records.is_empty() && empty.zero_tail && empty.good_end == HEADER_LEN);
        let mut buf = Vec::new();
        let mut off = HEADER_LEN;
        let mut locs = vec![];
        for i in 0..3u8 {
            let len = frame_record(&cipher, 7, off, &[&[i; 60], &[i; 40]], &mut buf);
            locs.push((off, len));
            off += u64::from(len);
        }
        f.write_all_at(&buf, HEADER_LEN).unwrap();
        let res = scan(&path, &cipher, 7, 0).unwrap();
        assert_eq!(res.records.len(), 3);
        assert!(res.zero_tail, "the rest is prepared space");
        assert!(!is_unused(&path).unwrap());
        // a torn fourth record
        f.write_all_at(&[50, 0, 0, 0, 1, 2], off).unwrap();
        let res = scan(&path, &cipher, 7, 0).unwrap();
        assert_eq!(res.records.len(), 3);
        assert_eq!(res.good_end, off);
        assert!(res.file_len > off && !res.zero_tail);
        let (o, l) = locs[1];
        assert_eq!(read_record(&f, &cipher, 7, o, l).unwrap(), vec![1u8; 100]);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![7]);
        let other = SegmentCipher::new(&random_key());
        assert!(matches!(scan(&path, &other, 7, 0), Err(LogError::Decrypt { .. })));
    }
}

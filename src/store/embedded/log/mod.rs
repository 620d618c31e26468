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

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::crypto::SegmentCipher;

use super::event::EventMeta;

mod files;
#[cfg(test)]
mod tests;

pub use files::{
    create_rewrite, create_segment, pad_to_page, remove_gradually, rewritten_from, scan_paced, write_rewrite, Pace,
    PAGE,
};

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

/// A segment's header (`from` 0: written by intake).
pub fn header(seq: u64, now_ms: i64) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    header[16..24].copy_from_slice(&(now_ms.max(0) as u64).to_le_bytes());
    header
}

/// [`scan`] over a segment's bytes already in memory (also what the fuzz
/// target `log_segment` drives).
pub fn scan_bytes(data: &[u8], cipher: &SegmentCipher, seq: u64, from: u64) -> Result<ScanResult, LogError> {
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

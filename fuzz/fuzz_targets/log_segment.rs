//! The intake log's reader, on segments it did not write and on ones it
//! did, then damaged: scanning stops at a torn tail, refuses what does not
//! decrypt, and every record it returns is one that was written, whose
//! plaintext then decodes (or is refused) without a panic.
#![no_main]

use intercom_webhooks::crypto::SegmentCipher;
use intercom_webhooks::store::embedded::log::{frame_record, header, scan_bytes, split_plaintext, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cipher = SegmentCipher::new(&[7u8; 32]);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        // Raw bytes as a whole segment, header included.
        if let Ok(scanned) = scan_bytes(rest, &cipher, 1, 0) {
            assert!(scanned.good_end <= scanned.file_len.max(HEADER_LEN));
            for r in scanned.records {
                let _ = split_plaintext(&r.plain);
            }
        }
        return;
    }
    // A segment written by us: the input's pieces (split at 0xFF) as record
    // plaintexts, then one byte flipped where the input's last two bytes say.
    let mut seg = header(1, 0).to_vec();
    let pieces: Vec<&[u8]> = rest.split(|&b| b == 0xFF).collect();
    for p in &pieces {
        let off = seg.len() as u64;
        frame_record(&cipher, 1, off, &[p], &mut seg);
    }
    let scanned = scan_bytes(&seg, &cipher, 1, 0).expect("an undamaged segment scans");
    assert_eq!(scanned.records.len(), pieces.len());
    for (r, p) in scanned.records.iter().zip(&pieces) {
        assert_eq!(&r.plain[..], *p);
        let _ = split_plaintext(&r.plain);
    }
    if rest.len() >= 2 && seg.len() > HEADER_LEN as usize {
        let at = (u16::from_le_bytes([rest[rest.len() - 2], rest[rest.len() - 1]]) as usize) % seg.len();
        seg[at] ^= 0x5a;
        if let Ok(damaged) = scan_bytes(&seg, &cipher, 1, 0) {
            // What still scans is a prefix of what was written.
            for (r, p) in damaged.records.iter().zip(&pieces) {
                assert_eq!(&r.plain[..], *p);
            }
        }
    }
});

use std::fs::OpenOptions;

use super::files::{zero_fill_buffered, DIRECT_CHUNK};
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

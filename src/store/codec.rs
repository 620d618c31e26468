//! A small binary encoding for the store's own records: little-endian fixed
//! integers, LEB128 lengths and counts, options as a 0/1 tag. Written by
//! hand rather than through serde so that the layout is explicit (it is an
//! on-disk format, versioned by its callers) and so that the hot path pays
//! for neither JSON text nor field names.

pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(n: usize) -> Self {
        Writer {
            out: Vec::with_capacity(n),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn len(&mut self, mut n: usize) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.out.push(byte);
                return;
            }
            self.out.push(byte | 0x80);
        }
    }

    pub fn str(&mut self, s: &str) {
        self.len(s.len());
        self.out.extend_from_slice(s.as_bytes());
    }

    pub fn opt<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                put(self, v);
            }
        }
    }
}

/// Reads what [`Writer`] wrote; every method returns `None` on a short or
/// malformed input instead of panicking.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn len(&mut self) -> Option<usize> {
        let mut n: usize = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            n |= usize::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                // Every counted unit (a byte of a string, an element of a
                // list) takes at least one byte: a larger count is garbage,
                // refused before anything allocates for it.
                return (n <= self.buf.len()).then_some(n);
            }
        }
        None
    }

    pub fn str(&mut self) -> Option<String> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).ok()
    }

    pub fn opt<T>(&mut self, get: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => get(self).map(Some),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_short_input() {
        let mut w = Writer::with_capacity(16);
        w.u8(7);
        w.u32(70_000);
        w.i64(-5);
        w.str(&"x".repeat(200)); // a two-byte length
        w.str("héllo");
        w.opt(Some(9u64), Writer::u64);
        w.opt(None::<u64>, Writer::u64);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Some(7));
        assert_eq!(r.u32(), Some(70_000));
        assert_eq!(r.i64(), Some(-5));
        assert_eq!(r.str(), Some("x".repeat(200)));
        assert_eq!(r.str().as_deref(), Some("héllo"));
        assert_eq!(r.opt(Reader::u64), Some(Some(9)));
        assert_eq!(r.opt(Reader::u64), Some(None));
        assert!(r.is_empty());
        for cut in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]);
            let whole = (|| {
                r.u8()?;
                r.u32()?;
                r.i64()?;
                r.str()?;
                r.str()?;
                r.opt(Reader::u64)?;
                r.opt(Reader::u64)
            })();
            assert!(whole.is_none(), "a cut at {cut} must not read as whole");
        }
    }

    #[test]
    fn a_huge_length_is_refused() {
        let mut w = Writer::with_capacity(16);
        w.len(usize::MAX >> 1);
        assert_eq!(Reader::new(&w.finish()).str(), None);
    }
}

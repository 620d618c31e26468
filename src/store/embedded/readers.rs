//! Reading payloads back: open segment files and their keys, and where
//! the records of a segment a shred pass replaced are now.

use super::*;

/// An open segment file and its key.
type Reader = Arc<(File, Arc<SegmentCipher>)>;

/// Open segment files and their keys, for reading payloads back, and
/// where the records of segments a shred pass replaced are now.
pub(crate) struct Readers {
    map: Mutex<HashMap<u64, Reader>>,
    /// The `moved` tree, in memory.
    moved: std::sync::RwLock<HashMap<u64, u64>>,
}

pub(super) fn be_u64(b: &[u8]) -> Option<u64> {
    b.try_into().ok().map(u64::from_be_bytes)
}

impl Readers {
    pub(super) fn new(moved: &sled::Tree) -> Result<Self, StoreError> {
        let mut map = HashMap::new();
        for kv in moved.iter() {
            let (k, v) = kv?;
            if let (Some(k), Some(v)) = (be_u64(&k), be_u64(&v)) {
                map.insert(k, v);
            }
        }
        Ok(Readers {
            map: Mutex::new(HashMap::new()),
            moved: std::sync::RwLock::new(map),
        })
    }

    /// The segment that holds the records written to segment `seq`
    /// (itself, unless a shred pass replaced it).
    pub(crate) fn resolve(&self, mut seq: u64) -> u64 {
        let moved = self.moved.read().unwrap_or_else(|p| p.into_inner());
        // A chain is kept short (see `set_moved`), and never has a cycle:
        // a replacement is always a newer segment.
        while let Some(&next) = moved.get(&seq) {
            seq = next;
        }
        seq
    }

    /// Records that segment `from`'s records are in `to` now, for it and
    /// for every segment that led to it.
    pub(crate) fn set_moved(&self, tree: &sled::Tree, from: u64, to: u64) -> Result<(), StoreError> {
        let mut moved = self.moved.write().unwrap_or_else(|p| p.into_inner());
        let leading: Vec<u64> = moved.iter().filter(|(_, &t)| t == from).map(|(&k, _)| k).collect();
        for k in leading.into_iter().chain([from]) {
            tree.insert(k.to_be_bytes(), &to.to_be_bytes())?;
            moved.insert(k, to);
        }
        Ok(())
    }

    /// Forgets the replacements that lead to `seq` (which is being dropped).
    pub(crate) fn forget_moved_to(&self, tree: &sled::Tree, seq: u64) -> Result<(), StoreError> {
        let mut moved = self.moved.write().unwrap_or_else(|p| p.into_inner());
        let leading: Vec<u64> = moved.iter().filter(|(_, &t)| t == seq).map(|(&k, _)| k).collect();
        for k in leading {
            tree.remove(k.to_be_bytes())?;
            moved.remove(&k);
        }
        Ok(())
    }

    pub(super) fn register(&self, seq: u64, dir: &Path, cipher: Arc<SegmentCipher>) -> Result<(), StoreError> {
        let file = File::open(log::segment_path(dir, seq))?;
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, Arc::new((file, cipher)));
        Ok(())
    }

    pub(super) fn forget(&self, seq: u64) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
    }

    pub(super) fn get(&self, seq: u64) -> Option<Reader> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&seq).cloned()
    }
}

//! Backup and restore of a whole store, running or stopped.
//!
//! The backup file holds the sled index (every tree, exported entry by
//! entry), the keyring and the closed intake log segments, as they are on
//! disk: payloads stay encrypted, and the data key is not in it (keep it
//! separately). Consistency: the index is exported first, then the open
//! segment is closed and every segment up to it copied, so every event the
//! index knows has its record in the backup; records appended during the
//! export are re-applied from the log when the restored store first opens.
//!
//! Format: `IWBACKUP1\n`, then sections `kind u8 | name len u16 | name |
//! data len u64 | data`; kind 1 is a file (name = path in the data dir),
//! kind 2 a sled tree whose data is `klen u32 | key | vlen u32 | value`...

use std::io::{Read, Write};
use std::path::Path;

use super::{log, Embedded, StoreError, CHECKPOINT};

const MAGIC: &[u8] = b"IWBACKUP1\n";
const FILE: u8 = 1;
const TREE: u8 = 2;

fn section(out: &mut impl Write, kind: u8, name: &str, data: &[u8]) -> std::io::Result<()> {
    out.write_all(&[kind])?;
    out.write_all(&(name.len() as u16).to_le_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&(data.len() as u64).to_le_bytes())?;
    out.write_all(data)
}

impl Embedded {
    /// Writes a consistent backup of the store to `out`. Returns the number
    /// of index entries and files written. Blocking.
    pub fn backup(
        &self,
        out: &mut impl Write,
        staged: Option<&crate::store::StagedKeys>,
    ) -> Result<(u64, u64), StoreError> {
        // What was erased before the backup began has its bytes destroyed
        // first, so the copy holds no record of it under a key it carries.
        self.shred()?;
        // No shred pass moves records between the index copy and the files.
        let _no_shred = self.inner.shred_lock.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(MAGIC)?;
        let mut entries = 0;
        let db = &self.inner.trees.db;
        for name in db.tree_names() {
            let tree = db.open_tree(&name)?;
            let mut data = Vec::new();
            for kv in tree.iter() {
                let (k, v) = kv?;
                data.extend_from_slice(&(k.len() as u32).to_le_bytes());
                data.extend_from_slice(&k);
                data.extend_from_slice(&(v.len() as u32).to_le_bytes());
                data.extend_from_slice(&v);
                entries += 1;
            }
            section(out, TREE, &String::from_utf8_lossy(&name), &data)?;
        }
        // Every record the index knows is in a segment closed by now (not in
        // one written since, nor in the one prepared ahead).
        self.roll_segment_blocking()?;
        let closed: std::collections::BTreeSet<u64> = self
            .segments()?
            .into_iter()
            .filter(|(_, i)| i.closed)
            .map(|(s, _)| s)
            .collect();
        let mut files = 0;
        for seq in log::list_segments(&self.inner.log_dir)? {
            if !closed.contains(&seq) {
                continue;
            }
            let bytes = std::fs::read(log::segment_path(&self.inner.log_dir, seq))?;
            section(out, FILE, &format!("log/{seq:016x}.seg"), &bytes)?;
            files += 1;
        }
        let mut keyring = std::fs::read(self.inner.dir.join("keyring.bin"))?;
        // The root key, wrapped by the data key (which is not in the backup).
        let root = match staged {
            None => std::fs::read(self.inner.dir.join(crate::crypto::ROOT_FILE))?,
            Some(k) => {
                super::keyring::rewrap_bytes(&mut keyring, &k.wrap_from, &k.wrap_to)?;
                k.root_file.clone()
            }
        };
        section(out, FILE, "keyring.bin", &keyring)?;
        section(out, FILE, crate::crypto::ROOT_FILE, &root)?;
        // The erasures made so far: a restore applies them again, and those
        // made after this backup come from the ledger it is given.
        let ledger = crate::store::ledger::read_lines(&self.inner.dir.join(super::LEDGER_FILE))?;
        let mut text = ledger.join("\n");
        text.push('\n');
        section(out, FILE, super::LEDGER_FILE, text.as_bytes())?;
        out.flush()?;
        Ok((entries, files + 3))
    }
}

/// Restores a backup into `dir`, which must not hold a store yet. The data
/// key is not in the backup: open the restored store with the same key.
pub fn restore(input: &mut impl Read, dir: &Path) -> Result<(u64, u64), StoreError> {
    if dir.join("index").exists() || dir.join("log").exists() {
        return Err(StoreError::Unavailable(format!(
            "{} already holds a store; restore needs an empty data dir",
            dir.display()
        )));
    }
    let mut magic = [0u8; MAGIC.len()];
    input.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(StoreError::Corrupt("not an intercom-webhooks backup".into()));
    }
    crate::fsutil::private_dir_all(&dir.join("log"))?;
    crate::fsutil::private_dir_all(&dir.join("index"))?;
    let db = sled::Config::new().path(dir.join("index")).open()?;
    let (mut entries, mut files) = (0, 0);
    loop {
        let mut kind = [0u8; 1];
        match input.read_exact(&mut kind) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let mut len2 = [0u8; 2];
        input.read_exact(&mut len2)?;
        let mut name = vec![0u8; u16::from_le_bytes(len2) as usize];
        input.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| StoreError::Corrupt("bad section name".into()))?;
        let mut len8 = [0u8; 8];
        input.read_exact(&mut len8)?;
        let mut data = vec![0u8; u64::from_le_bytes(len8) as usize];
        input.read_exact(&mut data)?;
        match kind[0] {
            TREE => {
                let tree = db.open_tree(name.as_bytes())?;
                let mut i = 0;
                while i < data.len() {
                    let take = |i: &mut usize| -> Result<Vec<u8>, StoreError> {
                        let l = u32::from_le_bytes(
                            data.get(*i..*i + 4)
                                .and_then(|b| b.try_into().ok())
                                .ok_or_else(|| StoreError::Corrupt("truncated tree".into()))?,
                        ) as usize;
                        let v = data
                            .get(*i + 4..*i + 4 + l)
                            .ok_or_else(|| StoreError::Corrupt("truncated tree".into()))?
                            .to_vec();
                        *i += 4 + l;
                        Ok(v)
                    };
                    let k = take(&mut i)?;
                    let v = take(&mut i)?;
                    tree.insert(k, v)?;
                    entries += 1;
                }
            }
            FILE => {
                let safe = name == "keyring.bin"
                    || name == crate::crypto::ROOT_FILE
                    || name == super::LEDGER_FILE
                    || (name.starts_with("log/") && name.ends_with(".seg") && !name.contains(".."));
                if !safe {
                    return Err(StoreError::Corrupt(format!("unexpected file {name} in backup")));
                }
                if name == super::LEDGER_FILE {
                    // Merged, never replaced: a ledger already in the data
                    // dir may hold erasures made after the backup.
                    let have: std::collections::HashSet<String> = crate::store::ledger::read_lines(&dir.join(&name))?
                        .into_iter()
                        .collect();
                    let lines: Vec<String> = String::from_utf8_lossy(&data)
                        .lines()
                        .filter(|l| !l.trim().is_empty() && !have.contains(*l))
                        .map(str::to_string)
                        .collect();
                    crate::store::ledger::append_lines(dir, &lines)?;
                } else {
                    crate::fsutil::private_file(&dir.join(&name), false)?.write_all(&data)?;
                }
                files += 1;
            }
            _ => return Err(StoreError::Corrupt("unknown section".into())),
        }
    }
    // Re-apply the whole log on first open: picks up records appended while
    // the index was being exported.
    db.open_tree("state")?.remove(CHECKPOINT)?;
    // ...and every erasure in the ledger (which may now hold lines from
    // before and after the backup's own).
    db.open_tree("state")?.remove(crate::store::ledger::APPLIED)?;
    db.open_tree("state")?.remove(super::ledger::NOTED)?;
    db.flush()?;
    drop(db);
    // Opened next by this process: its lock goes a moment after the drop.
    super::open::LAST_CLOSE_MS.store(crate::timefmt::now_ms(), std::sync::atomic::Ordering::Relaxed);
    Ok((entries, files))
}

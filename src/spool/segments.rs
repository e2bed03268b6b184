//! Message bodies in append-only segment files, beside sled.
//!
//! Why: sled 0.34 rewrites whole nodes into its log, so 2 KiB values cost
//! about 26 µs and several times their size in writes per insert (see
//! BENCHMARKS.md); sled is kept for the small index entries, and the bodies
//! go here, written once.
//!
//! Invariants:
//! - Only the committer thread writes. A group's bodies are written with one
//!   positioned write (`write_all_at` at the segment's length, never
//!   `O_APPEND`, so a failed or partial write is simply overwritten by the
//!   next one and offsets stay true) and `sync_data`'d *before* the sled
//!   batch that points at them is applied: nothing ever points at bytes that
//!   are not durable, so no sled flush (ours or sled's background one) can
//!   make such a pointer durable. `synced_len` is what `durable` checks.
//! - A new process never appends to an old segment: it starts a new one, so a
//!   torn tail from a power cut is never followed by live data.
//! - Each segment has a live count (persisted in sled by the store, in the
//!   same batches that add or remove references). A segment whose count is 0
//!   and which is not the active one is deleted, but only after a sled flush
//!   that covers the count reaching 0 (`take_deletable` is called after one).
//! - Every record carries its id and a CRC32; a read that does not match is
//!   an error (the store quarantines the message), never a panic.
//!
//! - Enqueues are journaled here too (`spool::journal`): after a request's
//!   bodies, a record with id [`JOURNAL_ID`] holds their index entries, so
//!   an acknowledged Enqueue survives in the segment alone, before sled's
//!   index is durable. Segments from the replay position on are kept at
//!   open whatever their live count, until the replay has counted them.
//!
//! Record layout: `len:u32 | crc32(id ‖ body):u32 | id:u64 | body`.

use crate::model::BodyLoc;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

impl BodyLoc {
    /// The offset just past this body's record in its segment.
    pub fn end(&self) -> u64 {
        self.offset + HEADER as u64 + u64::from(self.len)
    }
}

/// The length of segment `id`'s file in `dir`, if it exists.
pub fn segment_len(dir: &Path, id: u32) -> Option<u64> {
    std::fs::metadata(dir.join(file_name(id)))
        .ok()
        .map(|m| m.len())
}

pub(super) const HEADER: usize = 16;

/// The id of a journal record (no message id reaches it).
pub const JOURNAL_ID: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("segment {0} is missing")]
    Missing(u32),
    /// The body lies (partly) beyond the end of its segment file: it was
    /// never made durable, so it was never acknowledged (an index entry
    /// written by an older binary that applied the index before the fsync).
    #[error("body at segment {segment} offset {offset} lies beyond the end of the file")]
    Beyond { segment: u32, offset: u64 },
    #[error("body at segment {segment} offset {offset} is corrupt: {why}")]
    Corrupt {
        segment: u32,
        offset: u64,
        why: &'static str,
    },
}

/// Read access, shared with readers on other threads.
#[derive(Clone, Default)]
pub struct SegmentReader {
    files: Arc<RwLock<HashMap<u32, Arc<File>>>>,
}

impl SegmentReader {
    /// Reads and verifies the body at `loc` written for `id`.
    pub fn read(&self, id: u64, loc: BodyLoc) -> Result<Vec<u8>, SegmentError> {
        let file = self
            .files
            .read()
            .expect("segments")
            .get(&loc.segment)
            .cloned();
        let file = file.ok_or(SegmentError::Missing(loc.segment))?;
        let mut buf = vec![0u8; HEADER + loc.len as usize];
        match file.read_exact_at(&mut buf, loc.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(SegmentError::Beyond {
                    segment: loc.segment,
                    offset: loc.offset,
                })
            }
            Err(e) => return Err(e.into()),
        }
        let corrupt = |why| SegmentError::Corrupt {
            segment: loc.segment,
            offset: loc.offset,
            why,
        };
        let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
        let stored_id = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
        if len != loc.len {
            return Err(corrupt("length differs from the index"));
        }
        if stored_id != id {
            return Err(corrupt("belongs to another message"));
        }
        if crc32fast::hash(&buf[8..]) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        buf.drain(..HEADER);
        Ok(buf)
    }
}

/// The writer side: owned by the committer.
pub struct Segments {
    dir: PathBuf,
    reader: SegmentReader,
    active: Arc<File>,
    active_id: u32,
    /// Bytes written to the active segment (the next body's offset).
    active_len: u64,
    /// Bytes of the active segment known durable (`sync_data` returned).
    synced_len: u64,
    /// The number the next new segment gets; advanced on every attempt, so
    /// a failed create never makes later ones collide with its file.
    next_id: u32,
    max_bytes: u64,
    /// Bytes of the group being built, written by `sync`.
    pending: Vec<u8>,
    /// Live references per segment (mirrors what the store persists).
    live: BTreeMap<u32, u64>,
    /// Segments whose count reached 0, to delete after the next sled flush.
    doomed: Vec<u32>,
}

pub(super) fn file_name(id: u32) -> String {
    format!("{id:08}.seg")
}

fn parse_name(p: &Path) -> Option<u32> {
    let name = p.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

impl Segments {
    /// Opens the directory. `live` are the persisted counts; segments with
    /// no live reference are deleted (their bodies were never committed, or
    /// all were acknowledged). A new active segment is started.
    #[cfg(test)]
    pub fn open(
        dir: &Path,
        live: BTreeMap<u32, u64>,
        max_bytes: u64,
    ) -> Result<Segments, SegmentError> {
        Self::open_keeping(dir, live, max_bytes, u32::MAX)
    }

    /// As [`open`](Self::open), keeping (and opening) every segment
    /// numbered `keep_from` or above: the journal's replay reads them.
    pub fn open_keeping(
        dir: &Path,
        live: BTreeMap<u32, u64>,
        max_bytes: u64,
        keep_from: u32,
    ) -> Result<Segments, SegmentError> {
        crate::spool::fsutil::create_dir_durable(dir, 0o700)?;
        let reader = SegmentReader::default();
        let mut max_id = live.keys().next_back().copied().unwrap_or(0);
        let mut removed = false;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(id) = parse_name(&path) else {
                continue;
            };
            max_id = max_id.max(id);
            if live.get(&id).copied().unwrap_or(0) == 0 && id < keep_from {
                std::fs::remove_file(&path)?;
                removed = true;
            } else {
                reader
                    .files
                    .write()
                    .expect("segments")
                    .insert(id, Arc::new(File::open(&path)?));
            }
        }
        let live: BTreeMap<u32, u64> = live.into_iter().filter(|(_, n)| *n > 0).collect();
        for id in live.keys() {
            if !reader.files.read().expect("segments").contains_key(id) {
                tracing::error!(
                    segment = id,
                    "segment referenced by the index is missing; its messages will be quarantined"
                );
            }
        }
        let mut next_id = max_id + 1;
        let (active, active_id) = Self::create(dir, &reader, &mut next_id)?;
        if removed {
            File::open(dir)?.sync_all()?;
        }
        Ok(Segments {
            dir: dir.to_path_buf(),
            reader,
            active: Arc::new(active),
            active_id,
            active_len: 0,
            synced_len: 0,
            next_id,
            max_bytes,
            pending: Vec::new(),
            live,
            doomed: Vec::new(),
        })
    }

    /// A new, empty segment whose directory entry is durable.
    fn create(
        dir: &Path,
        reader: &SegmentReader,
        next_id: &mut u32,
    ) -> Result<(File, u32), SegmentError> {
        let id = *next_id;
        *next_id += 1;
        let path = dir.join(file_name(id));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        // If this fails the file stays, unreferenced (deleted at the next
        // open); the next attempt uses the next number.
        File::open(dir)?.sync_all()?;
        reader
            .files
            .write()
            .expect("segments")
            .insert(id, Arc::new(File::open(&path)?));
        Ok((file, id))
    }

    pub fn reader(&self) -> SegmentReader {
        self.reader.clone()
    }

    /// Adds a body to the group being built; durable after `sync`. The
    /// caller counts the reference (`apply`) once its group is committed.
    pub fn append(&mut self, id: u64, body: &[u8]) -> BodyLoc {
        let offset = self.active_len + self.pending.len() as u64;
        let len = u32::try_from(body.len()).expect("bodies are limited to 64 MiB");
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&id.to_le_bytes());
        hasher.update(body);
        self.pending.extend_from_slice(&len.to_le_bytes());
        self.pending
            .extend_from_slice(&hasher.finalize().to_le_bytes());
        self.pending.extend_from_slice(&id.to_le_bytes());
        self.pending.extend_from_slice(body);
        BodyLoc {
            segment: self.active_id,
            offset,
            len,
        }
    }

    /// Adds a journal record (index entries of the bodies appended before
    /// it) to the group being built.
    pub fn append_journal(&mut self, payload: &[u8]) {
        self.append(JOURNAL_ID, payload);
    }

    /// Where the next record goes: (active segment, offset), counting what
    /// the group being built has appended.
    pub fn position(&self) -> (u32, u64) {
        (self.active_id, self.active_len + self.pending.len() as u64)
    }

    /// After a replay: segments kept for it that hold no live body (and
    /// are not the active one) are deleted after the next flush.
    pub fn doom_unreferenced(&mut self) {
        let files: Vec<u32> = self
            .reader
            .files
            .read()
            .expect("segments")
            .keys()
            .copied()
            .collect();
        for id in files {
            if id != self.active_id && self.live(id) == 0 && !self.doomed.contains(&id) {
                self.doomed.push(id);
            }
        }
    }

    /// The directory's segment numbers, ascending.
    pub fn list(dir: &Path) -> Result<Vec<u32>, SegmentError> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(id) = parse_name(&entry?.path()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Writes the bodies appended since the last call at the segment's
    /// length. On an error nothing is counted as written: the group's
    /// bodies are dropped and the next write goes to the same offset,
    /// overwriting whatever part reached the file.
    pub fn write(&mut self) -> Result<(), SegmentError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.active.write_all_at(&self.pending, self.active_len);
        let n = self.pending.len() as u64;
        self.pending.clear();
        result?;
        self.active_len += n;
        Ok(())
    }

    /// Makes everything written to the active segment durable. An error
    /// here is an fsync failure: the caller must not acknowledge anything
    /// it covered, nor trust the page cache afterwards.
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        self.write()?;
        if self.active_len > self.synced_len {
            self.active.sync_data()?;
            self.synced_len = self.active_len;
        }
        Ok(())
    }

    /// Whether everything written to the active segment is durable.
    pub fn synced_all(&self) -> bool {
        self.active_len == self.synced_len
    }

    /// Whether `loc`'s bytes are durable: in an older segment (synced
    /// before it was rotated out), or within the active one's synced length.
    pub fn durable(&self, loc: &BodyLoc) -> bool {
        loc.segment != self.active_id || loc.end() <= self.synced_len
    }

    /// Drops bodies appended but not synced (their group failed).
    pub fn abandon_pending(&mut self) {
        self.pending.clear();
    }

    /// Starts a new segment when the active one is full. Call after the
    /// group's counts are applied.
    pub fn maybe_rotate(&mut self) -> Result<(), SegmentError> {
        if self.active_len >= self.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), SegmentError> {
        // Groups sync before they apply, so this is normally a no-op; an
        // error is an fsync failure and goes up.
        self.sync()?;
        let (file, id) = Self::create(&self.dir, &self.reader, &mut self.next_id)?;
        let old = self.active_id;
        self.active = Arc::new(file);
        self.active_id = id;
        self.active_len = 0;
        self.synced_len = 0;
        if self.live(old) == 0 {
            self.live.remove(&old);
            self.doomed.push(old);
        }
        Ok(())
    }

    /// Applies a committed change of `segment`'s live count.
    pub fn apply(&mut self, segment: u32, delta: i64) {
        let count = self.live.entry(segment).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 && segment != self.active_id {
            self.live.remove(&segment);
            self.doomed.push(segment);
        }
    }

    pub fn live(&self, segment: u32) -> u64 {
        self.live.get(&segment).copied().unwrap_or(0)
    }

    pub fn active_id(&self) -> u32 {
        self.active_id
    }

    /// Segments whose live count reached zero in batches already applied.
    /// Delete them ([`Deleter::delete`]) only after a sled flush and fsync
    /// that began after this call: then no durable pointer to them remains.
    pub fn take_doomed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.doomed)
    }

    /// What deletes segment files, for another thread (the fsync stage).
    pub fn deleter(&self) -> Deleter {
        Deleter {
            dir: self.dir.clone(),
            reader: self.reader.clone(),
        }
    }

    /// Call after a sled flush that covers every release so far: deletes the
    /// segments no index entry can point at any more.
    pub fn delete_doomed(&mut self) -> Result<usize, SegmentError> {
        let ids = self.take_doomed();
        self.deleter().delete(&ids)
    }

    pub fn has_doomed(&self) -> bool {
        !self.doomed.is_empty()
    }
}

/// Deletes segments once a flush covers the release of their last body.
pub struct Deleter {
    dir: PathBuf,
    reader: SegmentReader,
}

impl Deleter {
    /// Unlinks the files and fsyncs the directory; returns how many.
    pub fn delete(&self, ids: &[u32]) -> Result<usize, SegmentError> {
        if ids.is_empty() {
            return Ok(0);
        }
        for &id in ids {
            self.reader.files.write().expect("segments").remove(&id);
            match std::fs::remove_file(self.dir.join(file_name(id))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_sync_read_release_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), BTreeMap::new(), 100).unwrap();
        let a = s.append(1, b"hello");
        let b = s.append(2, &[7u8; 120]);
        s.sync().unwrap();
        s.apply(a.segment, 2);
        s.maybe_rotate().unwrap();
        let r = s.reader();
        assert_eq!(r.read(1, a).unwrap(), b"hello");
        assert_eq!(r.read(2, b).unwrap(), vec![7u8; 120]);
        assert!(
            matches!(r.read(2, a), Err(SegmentError::Corrupt { .. })),
            "id is checked"
        );
        // the segment filled up and rotated; releasing both dooms it
        assert_ne!(s.active_id(), a.segment);
        s.apply(a.segment, -2);
        assert_eq!(s.delete_doomed().unwrap(), 1);
        assert!(matches!(r.read(1, a), Err(SegmentError::Missing(_))));
    }

    #[test]
    fn reopen_keeps_live_segments_and_drops_unreferenced_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), BTreeMap::new(), 1 << 20).unwrap();
        let a = s.append(1, b"kept");
        s.sync().unwrap();
        let orphan = s.active_id();
        drop(s);
        // Only `a`'s segment is referenced... by a count of 1.
        let s = Segments::open(dir.path(), BTreeMap::from([(a.segment, 1)]), 1 << 20).unwrap();
        assert_eq!(s.reader().read(1, a).unwrap(), b"kept");
        assert!(s.active_id() > orphan);
        drop(s);
        // Nothing referenced: everything goes.
        let s = Segments::open(dir.path(), BTreeMap::new(), 1 << 20).unwrap();
        assert!(matches!(
            s.reader().read(1, a),
            Err(SegmentError::Missing(_))
        ));
    }

    #[test]
    fn flipped_bytes_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), BTreeMap::new(), 1 << 20).unwrap();
        let a = s.append(9, b"precious bytes");
        s.sync().unwrap();
        let path = dir.path().join(file_name(a.segment));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            s.reader().read(9, a),
            Err(SegmentError::Corrupt {
                why: "checksum mismatch",
                ..
            })
        ));
    }
}

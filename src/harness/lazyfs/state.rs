//! The filesystem's state: inodes with their current and durable versions,
//! faults, the freeze, and the crash that keeps only what was durable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

use super::{Fault, FaultOp, Trigger};

pub(super) const TTL: Duration = Duration::ZERO;
pub(super) const ROOT: u64 = 1;

pub(super) type Entries = BTreeMap<OsString, u64>;

pub(super) enum Kind {
    File { current: Vec<u8>, durable: Vec<u8> },
    Dir { current: Entries, durable: Entries },
}

pub(super) struct Node {
    pub(super) kind: Kind,
    pub(super) perm: u16,
    /// The last entry name it was given (faults and triggers match it).
    pub(super) name: OsString,
    /// Current entries that name it.
    pub(super) links: u32,
    /// Durable entries (of the directories still kept) that name it.
    pub(super) durable_links: u32,
    /// Directories among its current entries (for a directory's nlink).
    pub(super) subdirs: u32,
    /// Open file handles.
    pub(super) open: u32,
    /// Set by a PartialWrite fault: the errno of the next write.
    pub(super) fail_next_write: Option<i32>,
}

impl Node {
    pub(super) fn new(kind: Kind, perm: u16, name: &OsStr) -> Node {
        Node {
            kind,
            perm,
            name: name.to_os_string(),
            links: 0,
            durable_links: 0,
            subdirs: 0,
            open: 0,
            fail_next_write: None,
        }
    }

    pub(super) fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir { .. })
    }
}

pub(super) struct State {
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) next_ino: u64,
    /// Open directory handles: the entries as of the start of the listing.
    pub(super) listings: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    pub(super) next_fh: u64,
    /// fsync calls seen (files), for the tests' own sanity.
    pub(super) fsyncs: u64,
    /// Directory entries undone by crashes so far.
    pub(super) entries_lost: u64,
    /// The entries the last crash undid, as `dir/name (what)`.
    pub(super) last_undone: Vec<String>,
    pub(super) faults: Vec<Fault>,
    pub(super) faults_hit: u64,
    pub(super) frozen: bool,
    /// The armed trigger, with the matching fsyncs seen so far.
    pub(super) trigger: Option<(Trigger, u32)>,
}

impl State {
    pub(super) fn new() -> State {
        let root = Node {
            links: 1,
            ..Node::new(
                Kind::Dir {
                    current: Entries::new(),
                    durable: Entries::new(),
                },
                0o755,
                OsStr::new(""),
            )
        };
        State {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            listings: HashMap::new(),
            next_fh: 1,
            fsyncs: 0,
            entries_lost: 0,
            last_undone: Vec::new(),
            faults: Vec::new(),
            faults_hit: 0,
            frozen: false,
            trigger: None,
        }
    }

    pub(super) fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &n.kind {
            Kind::File { current, .. } => (FileType::RegularFile, current.len() as u64, n.links),
            // Its entry in the parent, its own ".", each subdirectory's "..";
            // 0 once removed.
            Kind::Dir { .. } => (
                FileType::Directory,
                0,
                if n.links == 0 { 0 } else { 2 + n.subdirs },
            ),
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm: n.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    pub(super) fn is_dir(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(Node::is_dir)
    }

    pub(super) fn entries(&self, dir: u64) -> Result<&Entries, i32> {
        match self.nodes.get(&dir).map(|n| &n.kind) {
            Some(Kind::Dir { current, .. }) => Ok(current),
            Some(Kind::File { .. }) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    pub(super) fn entries_mut(&mut self, dir: u64) -> Result<&mut Entries, i32> {
        match self.nodes.get_mut(&dir).map(|n| &mut n.kind) {
            Some(Kind::Dir { current, .. }) => Ok(current),
            Some(Kind::File { .. }) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    pub(super) fn child(&self, dir: u64, name: &OsStr) -> Option<u64> {
        self.entries(dir).ok()?.get(name).copied()
    }

    /// One more (or one fewer) current entry of `dir` names `ino`.
    pub(super) fn count_link(&mut self, dir: u64, ino: u64, more: bool) {
        let step = |v: &mut u32| *v = if more { *v + 1 } else { v.saturating_sub(1) };
        let is_dir = match self.nodes.get_mut(&ino) {
            Some(n) => {
                step(&mut n.links);
                n.is_dir()
            }
            None => false,
        };
        if is_dir {
            if let Some(d) = self.nodes.get_mut(&dir) {
                step(&mut d.subdirs);
            }
        }
    }

    /// Points `name` in `dir` at `ino`; returns the inode it named before.
    pub(super) fn put(&mut self, dir: u64, name: &OsStr, ino: u64) -> Result<Option<u64>, i32> {
        let old = self.entries_mut(dir)?.insert(name.to_os_string(), ino);
        if let Some(old) = old {
            self.count_link(dir, old, false);
        }
        self.count_link(dir, ino, true);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.name = name.to_os_string();
        }
        Ok(old)
    }

    /// Removes `name` from `dir`; returns the inode it named.
    pub(super) fn take(&mut self, dir: u64, name: &OsStr) -> Option<u64> {
        let ino = self.entries_mut(dir).ok()?.remove(name)?;
        self.count_link(dir, ino, false);
        Some(ino)
    }

    /// A new inode named `name` in `dir`.
    pub(super) fn add(
        &mut self,
        dir: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
    ) -> Result<u64, i32> {
        if self.entries(dir)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node::new(kind, perm, name));
        self.put(dir, name, ino)?;
        Ok(ino)
    }

    /// Drops a file that nothing can reach any more: no current entry, no
    /// durable entry, no open handle. (Directories wait for `crash`.)
    pub(super) fn free_if_unreachable(&mut self, ino: u64) {
        if self
            .nodes
            .get(&ino)
            .is_some_and(|n| !n.is_dir() && n.links == 0 && n.durable_links == 0 && n.open == 0)
        {
            self.nodes.remove(&ino);
        }
    }

    pub(super) fn file(&mut self, ino: u64) -> Result<&mut Node, i32> {
        match self.nodes.get_mut(&ino) {
            Some(n) if n.is_dir() => Err(libc::EISDIR),
            Some(n) => Ok(n),
            None => Err(libc::ENOENT),
        }
    }

    /// The errno of an injected fault for `op` on `ino`, using it up.
    pub(super) fn fault(&mut self, op: FaultOp, ino: u64) -> Option<i32> {
        let n = self.nodes.get(&ino)?;
        self.fault_named(op, &n.name.clone())
    }

    pub(super) fn fault_named(&mut self, op: FaultOp, name: &OsStr) -> Option<i32> {
        let i = self.faults.iter().position(|f| {
            f.op == op && f.times > 0 && name.as_bytes().ends_with(f.file.as_bytes())
        })?;
        let f = &mut self.faults[i];
        f.times -= 1;
        let errno = f.errno;
        if f.times == 0 {
            self.faults.remove(i);
        }
        self.faults_hit += 1;
        Some(errno)
    }

    /// An fsync of a file named `name` is about to take effect.
    pub(super) fn fsync_trigger(&mut self, name: &OsStr) {
        if let Some((Trigger::Fsync { file, nth }, seen)) = &mut self.trigger {
            if name.as_bytes().ends_with(file.as_bytes()) {
                *seen += 1;
                if *seen >= (*nth).max(1) {
                    self.trigger = None;
                    self.frozen = true;
                }
            }
        }
    }

    /// `name` was just unlinked.
    pub(super) fn unlink_trigger(&mut self, name: &OsStr) {
        if let Some((Trigger::Unlink { file }, _)) = &self.trigger {
            if name.as_bytes().ends_with(file.as_bytes()) {
                self.trigger = None;
                self.frozen = true;
            }
        }
    }

    /// The power cut. Returns the number of files that lost bytes.
    pub(super) fn crash(&mut self) -> usize {
        // What survives: the inodes durable entries reach from the root.
        let mut keep = HashSet::new();
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if !keep.insert(ino) {
                continue;
            }
            if let Some(Node {
                kind: Kind::Dir { durable, .. },
                ..
            }) = self.nodes.get(&ino)
            {
                todo.extend(
                    durable
                        .values()
                        .filter(|i| self.nodes.contains_key(i))
                        .copied(),
                );
            }
        }
        self.nodes.retain(|ino, _| keep.contains(ino));
        let mut lost_files = 0;
        self.last_undone.clear();
        for n in self.nodes.values_mut() {
            match &mut n.kind {
                Kind::File { current, durable } => {
                    if current != durable {
                        lost_files += 1;
                        current.clone_from(durable);
                    }
                }
                Kind::Dir { current, durable } => {
                    let dir = n.name.to_string_lossy();
                    for (name, ino) in current.iter() {
                        let what = match durable.get(name) {
                            Some(was) if was == ino => continue,
                            Some(_) => "replaced",
                            None => "created",
                        };
                        let name = name.to_string_lossy();
                        self.last_undone.push(format!("{dir}/{name} ({what})"));
                    }
                    for name in durable.keys().filter(|k| !current.contains_key(*k)) {
                        let name = name.to_string_lossy();
                        self.last_undone.push(format!("{dir}/{name} (removed)"));
                    }
                    current.clone_from(durable);
                }
            }
            n.links = 0;
            n.durable_links = 0;
            n.subdirs = 0;
            n.fail_next_write = None;
        }
        self.entries_lost += self.last_undone.len() as u64;
        // Count the links again, and name each inode after an entry it has.
        let mut edges = Vec::new();
        for (dir, n) in &self.nodes {
            if let Kind::Dir { current, .. } = &n.kind {
                for (name, ino) in current {
                    edges.push((*dir, name.clone(), *ino));
                }
            }
        }
        if let Some(root) = self.nodes.get_mut(&ROOT) {
            root.links = 1;
        }
        for (dir, name, ino) in edges {
            self.count_link(dir, ino, true);
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.durable_links += 1;
                n.name = name;
            }
        }
        self.frozen = false;
        lost_files
    }
}

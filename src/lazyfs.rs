//! LazyFs: a FUSE filesystem that forgets, when told to crash, everything
//! that was not made durable (the idea of LazyFS, which Jepsen uses), small
//! enough to read in one sitting. A test harness: the integration tests and
//! `mailspool torture --power-cuts` mount it; the server never uses it.
//!
//! Everything lives in memory, with strict POSIX durability:
//! - each file has the bytes processes see (`current`) and the bytes that
//!   survive a power cut (`durable`); `fsync`/`fdatasync` of the file copies
//!   current to durable;
//! - each directory has its current entries and its durable entries;
//!   `fsync` of the directory (FUSE `fsyncdir`) makes its current entries
//!   durable. A create, mkdir, rename, hard link or unlink that no fsync of
//!   the directory covered is undone by a crash;
//! - [`Mounted::crash`] is the power cut: every directory reverts to its
//!   durable entries, every file to its durable bytes, and inodes that no
//!   durable entry reaches any more are gone. The mount root starts with its
//!   (empty) entries durable.
//!
//! An inode stays alive after its last unlink while a durable entry may
//! still bring it back. On top of that: injected faults ([`Mounted::inject`])
//! and a cut at a chosen point ([`Mounted::freeze`], [`Mounted::freeze_on`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;

/// Whether this machine can mount LazyFs: /dev/fuse and /usr/bin/fusermount3
/// (Debian package fuse3).
pub fn available() -> bool {
    Path::new("/dev/fuse").exists() && Path::new("/usr/bin/fusermount3").exists()
}

/// A fault to inject: the next `times` operations `op` on a file whose name
/// (its last entry name) ends with `file` fail with `errno`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Matches a file whose name ends with this ("" matches every file).
    pub file: String,
    pub op: FaultOp,
    /// The error the operation returns (e.g. `libc::EIO`); not `ENOSYS`,
    /// which makes the kernel stop sending that operation for good.
    pub errno: i32,
    /// How many matching operations fail; then the fault is used up.
    pub times: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// fsync/fdatasync of a file; `durable` stays as it was.
    Fsync,
    /// A write; nothing is written.
    Write,
    /// A write stores the first half of its buffer and reports a short write;
    /// the next write to the file then fails with `errno`. (A one-byte write
    /// fails at once.)
    PartialWrite,
    /// A read of the file (a read served from the kernel's page cache never
    /// gets here; a freshly opened file reads through). The kernel tries a
    /// buffered read that failed in readahead once more, so failing one
    /// read(2) takes `times: 2`.
    Read,
    /// Creating a file or a directory of that name; nothing is created.
    Create,
    /// fsync of a directory: `file` matches the directory's name. Its durable
    /// entries stay as they were.
    FsyncDir,
}

/// When [`Mounted::freeze_on`] freezes by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Just before the `nth` (from 1) fsync of a file whose name ends with
    /// `file` takes effect: that fsync already copies nothing. Fsyncs failed
    /// by an injected fault do not count.
    Fsync { file: String, nth: u32 },
    /// Just after the first unlink of a file whose name ends with `file`.
    Unlink { file: String },
}

type Entries = BTreeMap<OsString, u64>;

enum Kind {
    File { current: Vec<u8>, durable: Vec<u8> },
    Dir { current: Entries, durable: Entries },
}

struct Node {
    kind: Kind,
    perm: u16,
    /// The last entry name it was given (faults and triggers match it).
    name: OsString,
    /// Current entries that name it.
    links: u32,
    /// Durable entries (of the directories still kept) that name it.
    durable_links: u32,
    /// Directories among its current entries (for a directory's nlink).
    subdirs: u32,
    /// Open file handles.
    open: u32,
    /// Set by a PartialWrite fault: the errno of the next write.
    fail_next_write: Option<i32>,
}

impl Node {
    fn new(kind: Kind, perm: u16, name: &OsStr) -> Node {
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

    fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir { .. })
    }
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Open directory handles: the entries as of the start of the listing.
    listings: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
    /// fsync calls seen (files), for the tests' own sanity.
    fsyncs: u64,
    /// Directory entries undone by crashes so far.
    entries_lost: u64,
    /// The entries the last crash undid, as `dir/name (what)`.
    last_undone: Vec<String>,
    faults: Vec<Fault>,
    faults_hit: u64,
    frozen: bool,
    /// The armed trigger, with the matching fsyncs seen so far.
    trigger: Option<(Trigger, u32)>,
}

impl State {
    fn new() -> State {
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

    fn attr(&self, ino: u64) -> Option<FileAttr> {
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

    fn is_dir(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(Node::is_dir)
    }

    fn entries(&self, dir: u64) -> Result<&Entries, i32> {
        match self.nodes.get(&dir).map(|n| &n.kind) {
            Some(Kind::Dir { current, .. }) => Ok(current),
            Some(Kind::File { .. }) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut Entries, i32> {
        match self.nodes.get_mut(&dir).map(|n| &mut n.kind) {
            Some(Kind::Dir { current, .. }) => Ok(current),
            Some(Kind::File { .. }) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn child(&self, dir: u64, name: &OsStr) -> Option<u64> {
        self.entries(dir).ok()?.get(name).copied()
    }

    /// One more (or one fewer) current entry of `dir` names `ino`.
    fn count_link(&mut self, dir: u64, ino: u64, more: bool) {
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
    fn put(&mut self, dir: u64, name: &OsStr, ino: u64) -> Result<Option<u64>, i32> {
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
    fn take(&mut self, dir: u64, name: &OsStr) -> Option<u64> {
        let ino = self.entries_mut(dir).ok()?.remove(name)?;
        self.count_link(dir, ino, false);
        Some(ino)
    }

    /// A new inode named `name` in `dir`.
    fn add(&mut self, dir: u64, name: &OsStr, kind: Kind, perm: u16) -> Result<u64, i32> {
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
    fn free_if_unreachable(&mut self, ino: u64) {
        if self
            .nodes
            .get(&ino)
            .is_some_and(|n| !n.is_dir() && n.links == 0 && n.durable_links == 0 && n.open == 0)
        {
            self.nodes.remove(&ino);
        }
    }

    fn file(&mut self, ino: u64) -> Result<&mut Node, i32> {
        match self.nodes.get_mut(&ino) {
            Some(n) if n.is_dir() => Err(libc::EISDIR),
            Some(n) => Ok(n),
            None => Err(libc::ENOENT),
        }
    }

    /// The errno of an injected fault for `op` on `ino`, using it up.
    fn fault(&mut self, op: FaultOp, ino: u64) -> Option<i32> {
        let n = self.nodes.get(&ino)?;
        self.fault_named(op, &n.name.clone())
    }

    fn fault_named(&mut self, op: FaultOp, name: &OsStr) -> Option<i32> {
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
    fn fsync_trigger(&mut self, name: &OsStr) {
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
    fn unlink_trigger(&mut self, name: &OsStr) {
        if let Some((Trigger::Unlink { file }, _)) = &self.trigger {
            if name.as_bytes().ends_with(file.as_bytes()) {
                self.trigger = None;
                self.frozen = true;
            }
        }
    }

    /// The power cut. Returns the number of files that lost bytes.
    fn crash(&mut self) -> usize {
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

struct LazyFs(Arc<Mutex<State>>);

impl LazyFs {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic in one handler must not take the others down with it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Filesystem for LazyFs {
    fn lookup(&mut self, _r: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let s = self.state();
        match s.child(parent, name).and_then(|i| s.attr(i)) {
            Some(a) => reply.entry(&TTL, &a, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _r: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.state().attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _r: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        if let Some(size) = size {
            match s.file(ino) {
                Ok(Node {
                    kind: Kind::File { current, .. },
                    ..
                }) => current.resize(size as usize, 0),
                Ok(_) => {}
                Err(e) => return reply.error(e),
            }
        }
        if let (Some(mode), Some(n)) = (mode, s.nodes.get_mut(&ino)) {
            n.perm = (mode & 0o7777) as u16;
        }
        match s.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn mkdir(
        &mut self,
        _r: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.state();
        if let Some(errno) = s.fault_named(FaultOp::Create, name) {
            return reply.error(errno);
        }
        let dir = Kind::Dir {
            current: Entries::new(),
            durable: Entries::new(),
        };
        match s.add(parent, name, dir, (mode & 0o7777) as u16) {
            Ok(ino) => reply.entry(&TTL, &s.attr(ino).expect("just added"), 0),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _r: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let ino = match s.child(parent, name) {
            Some(_) if flags & libc::O_EXCL != 0 => return reply.error(libc::EEXIST),
            Some(ino) => {
                if flags & libc::O_TRUNC != 0 {
                    if let Ok(Node {
                        kind: Kind::File { current, .. },
                        ..
                    }) = s.file(ino)
                    {
                        current.clear();
                    }
                }
                ino
            }
            None => {
                if let Some(errno) = s.fault_named(FaultOp::Create, name) {
                    return reply.error(errno);
                }
                let file = Kind::File {
                    current: Vec::new(),
                    durable: Vec::new(),
                };
                match s.add(parent, name, file, (mode & 0o7777) as u16) {
                    Ok(ino) => ino,
                    Err(e) => return reply.error(e),
                }
            }
        };
        if let Some(n) = s.nodes.get_mut(&ino) {
            n.open += 1;
        }
        reply.created(&TTL, &s.attr(ino).expect("exists"), 0, 0, 0);
    }

    fn open(&mut self, _r: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mut s = self.state();
        match s.file(ino) {
            Ok(n) => {
                n.open += 1;
                if let Kind::File { current, .. } = &mut n.kind {
                    if flags & libc::O_TRUNC != 0 {
                        current.clear();
                    }
                }
                reply.opened(0, 0);
            }
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &mut self,
        _r: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        if let Some(n) = s.nodes.get_mut(&ino) {
            n.open = n.open.saturating_sub(1);
        }
        s.free_if_unreachable(ino);
        reply.ok();
    }

    fn read(
        &mut self,
        _r: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _f: i32,
        _l: Option<u64>,
        reply: ReplyData,
    ) {
        let mut s = self.state();
        if let Some(errno) = s.fault(FaultOp::Read, ino) {
            return reply.error(errno);
        }
        match s.file(ino) {
            Ok(Node {
                kind: Kind::File { current, .. },
                ..
            }) => {
                let start = (offset.max(0) as usize).min(current.len());
                let end = (start + size as usize).min(current.len());
                reply.data(&current[start..end]);
            }
            Ok(_) => reply.error(libc::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _r: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _wf: u32,
        _f: i32,
        _l: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        let mut data = data;
        if let Ok(n) = s.file(ino) {
            if let Some(errno) = n.fail_next_write.take() {
                return reply.error(errno);
            }
        }
        if let Some(errno) = s.fault(FaultOp::Write, ino) {
            return reply.error(errno);
        }
        let mut then_fail = None;
        if let Some(errno) = s.fault(FaultOp::PartialWrite, ino) {
            if data.len() < 2 {
                return reply.error(errno);
            }
            data = &data[..data.len() / 2];
            then_fail = Some(errno);
        }
        match s.file(ino) {
            Ok(Node {
                kind: Kind::File { current, .. },
                fail_next_write,
                ..
            }) => {
                let start = offset.max(0) as usize;
                let end = start + data.len();
                if current.len() < end {
                    current.resize(end, 0);
                }
                current[start..end].copy_from_slice(data);
                *fail_next_write = then_fail;
                reply.written(data.len() as u32);
            }
            Ok(_) => reply.error(libc::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _r: &Request<'_>, _ino: u64, _fh: u64, _l: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&mut self, _r: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let mut s = self.state();
        s.fsyncs += 1;
        if s.file(ino).is_err() {
            return reply.error(libc::EINVAL);
        }
        if let Some(errno) = s.fault(FaultOp::Fsync, ino) {
            return reply.error(errno);
        }
        let name = s.nodes[&ino].name.clone();
        s.fsync_trigger(&name);
        if !s.frozen {
            if let Ok(Node {
                kind: Kind::File { current, durable },
                ..
            }) = s.file(ino)
            {
                durable.clone_from(current);
            }
        }
        reply.ok();
    }

    fn opendir(&mut self, _r: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let mut s = self.state();
        if let Err(e) = s.entries(ino) {
            return reply.error(e);
        }
        let fh = s.next_fh;
        s.next_fh += 1;
        reply.opened(fh, 0);
    }

    fn readdir(
        &mut self,
        _r: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.state();
        // A listing is taken at its start (offset 0, also after a rewind) and
        // served from that snapshot, so that entries removed while a reader
        // goes through it (remove_dir_all) do not shift the offsets.
        if offset == 0 || !s.listings.contains_key(&fh) {
            let entries = match s.entries(ino) {
                Ok(e) => e,
                Err(e) => return reply.error(e),
            };
            let mut all = vec![
                (ino, FileType::Directory, OsString::from(".")),
                (ino, FileType::Directory, OsString::from("..")),
            ];
            for (name, child) in entries {
                let kind = if s.is_dir(*child) {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                all.push((*child, kind, name.clone()));
            }
            s.listings.insert(fh, all);
        }
        for (i, (child, kind, name)) in s.listings[&fh]
            .iter()
            .enumerate()
            .skip(offset.max(0) as usize)
        {
            if reply.add(*child, (i + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&mut self, _r: &Request<'_>, _ino: u64, fh: u64, _f: i32, reply: ReplyEmpty) {
        self.state().listings.remove(&fh);
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _r: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        if let Err(e) = s.entries(ino) {
            return reply.error(e);
        }
        if let Some(errno) = s.fault(FaultOp::FsyncDir, ino) {
            return reply.error(errno);
        }
        if s.frozen {
            return reply.ok();
        }
        let (before, now) = match s.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::Dir { current, durable }) => {
                (std::mem::replace(durable, current.clone()), current.clone())
            }
            _ => return reply.error(libc::ENOTDIR),
        };
        for child in now.values() {
            if let Some(n) = s.nodes.get_mut(child) {
                n.durable_links += 1;
            }
        }
        for child in before.values() {
            if let Some(n) = s.nodes.get_mut(child) {
                n.durable_links = n.durable_links.saturating_sub(1);
            }
            s.free_if_unreachable(*child);
        }
        reply.ok();
    }

    fn unlink(&mut self, _r: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        match s.child(parent, name) {
            Some(ino) if s.is_dir(ino) => return reply.error(libc::EISDIR),
            Some(_) => {}
            None => return reply.error(libc::ENOENT),
        }
        if let Some(ino) = s.take(parent, name) {
            s.free_if_unreachable(ino);
        }
        s.unlink_trigger(name);
        reply.ok();
    }

    fn rmdir(&mut self, _r: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        let Some(ino) = s.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        match s.entries(ino) {
            Ok(e) if !e.is_empty() => return reply.error(libc::ENOTEMPTY),
            Ok(_) => {}
            Err(e) => return reply.error(e),
        }
        s.take(parent, name);
        reply.ok();
    }

    fn rename(
        &mut self,
        _r: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let (noreplace, exchange) = (libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE);
        if flags & !(noreplace | exchange) != 0 || flags == noreplace | exchange {
            return reply.error(libc::EINVAL);
        }
        if let Err(e) = s.entries(newparent) {
            return reply.error(e);
        }
        let Some(src) = s.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        let dst = s.child(newparent, newname);
        if flags & exchange != 0 {
            let Some(dst) = dst else {
                return reply.error(libc::ENOENT);
            };
            let swapped = s
                .put(parent, name, dst)
                .and_then(|_| s.put(newparent, newname, src));
            return match swapped {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e),
            };
        }
        if let Some(dst) = dst {
            if flags & noreplace != 0 {
                return reply.error(libc::EEXIST);
            }
            if dst == src {
                // Two names of one inode: POSIX says do nothing.
                return reply.ok();
            }
            match (s.is_dir(src), s.is_dir(dst)) {
                (true, false) => return reply.error(libc::ENOTDIR),
                (false, true) => return reply.error(libc::EISDIR),
                (true, true) if s.entries(dst).is_ok_and(|e| !e.is_empty()) => {
                    return reply.error(libc::ENOTEMPTY)
                }
                _ => {}
            }
        }
        s.take(parent, name);
        match s.put(newparent, newname, src) {
            Ok(Some(old)) => {
                s.free_if_unreachable(old);
                reply.ok()
            }
            Ok(None) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &mut self,
        _r: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut s = self.state();
        match s.nodes.get(&ino) {
            Some(n) if n.is_dir() => return reply.error(libc::EPERM),
            Some(_) => {}
            None => return reply.error(libc::ENOENT),
        }
        match s.entries(newparent) {
            Ok(e) if e.contains_key(newname) => return reply.error(libc::EEXIST),
            Ok(_) => {}
            Err(e) => return reply.error(e),
        }
        match s.put(newparent, newname, ino) {
            Ok(_) => reply.entry(&TTL, &s.attr(ino).expect("exists"), 0),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&mut self, _r: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        // 64 GiB, nearly all free: the spool's free-space limits stay out of the way.
        reply.statfs(1 << 24, 1 << 24, 1 << 24, 1 << 20, 1 << 20, 4096, 255, 4096);
    }
}

/// A mounted LazyFs; unmounted when dropped.
pub struct Mounted {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    _session: fuser::BackgroundSession,
}

impl Mounted {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Simulated power cut: every directory goes back to its durable entries
    /// and every file to its durable bytes; inodes that no durable entry
    /// reaches are gone. Ends a freeze (an armed trigger stays armed).
    /// Returns how many (surviving) files lost bytes.
    pub fn crash(&self) -> usize {
        self.state().crash()
    }

    /// fsync/fdatasync calls on files so far.
    pub fn fsyncs(&self) -> u64 {
        self.state().fsyncs
    }

    /// Directory entries undone by crashes so far (a lost create or unlink is
    /// one, a lost rename two: the new name and the old).
    pub fn entries_lost(&self) -> u64 {
        self.state().entries_lost
    }

    /// The directory entries the last crash undid, each as `dir/name (what)`:
    /// `dir` is the directory's own name ("" for the root), `what` is
    /// `created` (a create, mkdir, link or rename to it was undone),
    /// `removed` (an unlink, rmdir or rename from it was undone) or
    /// `replaced` (it names its durable inode again).
    pub fn last_undone(&self) -> Vec<String> {
        self.state().last_undone.clone()
    }

    /// Adds a fault; faults are matched in the order they were injected.
    pub fn inject(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    /// Removes every fault not yet used up (and a pending PartialWrite error).
    pub fn clear_faults(&self) {
        let mut s = self.state();
        s.faults.clear();
        for n in s.nodes.values_mut() {
            n.fail_next_write = None;
        }
    }

    /// Operations failed (or shortened) by injected faults so far; a
    /// PartialWrite counts once.
    pub fn faults_hit(&self) -> u64 {
        self.state().faults_hit
    }

    /// From now on nothing becomes durable (fsync and fsyncdir succeed and
    /// copy nothing): a later `crash` is a power cut at this moment.
    pub fn freeze(&self) {
        self.state().frozen = true;
    }

    /// Freezes by itself when `trigger` happens (replacing an armed trigger).
    pub fn freeze_on(&self, trigger: Trigger) {
        self.state().trigger = Some((trigger, 0));
    }

    pub fn frozen(&self) -> bool {
        self.state().frozen
    }
}

/// Mounts a fresh, empty LazyFs on `dir` (an existing directory).
pub fn mount(dir: &Path) -> std::io::Result<Mounted> {
    let state = Arc::new(Mutex::new(State::new()));
    let session = fuser::spawn_mount2(
        LazyFs(state.clone()),
        dir,
        &[MountOption::FSName("lazyfs".into()), MountOption::RW],
    )?;
    Ok(Mounted {
        state,
        path: dir.to_path_buf(),
        _session: session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File, OpenOptions};
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;

    /// A mounted LazyFs in a temporary directory (unmounted first when dropped).
    struct Mnt {
        fs: Mounted,
        dir: tempfile::TempDir,
    }

    impl Mnt {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// fsync of a directory (relative to the mount; "" is the root).
        fn sync_dir(&self, name: &str) -> std::io::Result<()> {
            File::open(self.path(name))?.sync_all()
        }

        /// Creates `name` with `data`, fsyncs it and, with `dir`, its directory.
        fn durable_file(&self, name: &str, data: &[u8], dir: Option<&str>) {
            let mut f = File::create(self.path(name)).unwrap();
            f.write_all(data).unwrap();
            f.sync_all().unwrap();
            if let Some(d) = dir {
                self.sync_dir(d).unwrap();
            }
        }
    }

    fn mounted() -> Option<Mnt> {
        if !available() {
            assert!(
                std::env::var("CI").map(|v| v != "true").unwrap_or(true),
                "/dev/fuse and /usr/bin/fusermount3 (Debian package fuse3) are needed under CI=true"
            );
            eprintln!("SKIPPED: no FUSE here (/dev/fuse, apt-get install fuse3); CI runs this");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("mailspool-lazyfs")
            .tempdir()
            .unwrap();
        let fs = mount(dir.path()).expect("mount LazyFs");
        Some(Mnt { fs, dir })
    }

    fn errno(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
        r.expect_err("an error")
            .raw_os_error()
            .expect("an OS error")
    }

    #[test]
    fn a_synced_file_in_an_unsynced_directory_is_gone_after_a_crash() {
        let Some(m) = mounted() else { return };
        fs::create_dir(m.path("d")).unwrap();
        m.sync_dir("").unwrap();
        m.durable_file("d/f", b"hello", None);
        assert_eq!(fs::read(m.path("d/f")).unwrap(), b"hello");
        assert_eq!(m.fs.crash(), 0);
        assert!(m.path("d").is_dir(), "d was made durable in the root");
        assert!(!m.path("d/f").exists(), "its entry in d was never fsynced");
        assert_eq!(m.fs.entries_lost(), 1);
        assert_eq!(m.fs.last_undone(), ["d/f (created)"]);
        // A directory whose own creation was not fsynced goes with its contents.
        fs::create_dir(m.path("e")).unwrap();
        m.durable_file("e/g", b"x", Some("e"));
        m.fs.crash();
        assert!(!m.path("e").exists());
        assert_eq!(m.fs.entries_lost(), 2);
    }

    #[test]
    fn fsyncdir_makes_the_entry_survive() {
        let Some(m) = mounted() else { return };
        fs::create_dir(m.path("d")).unwrap();
        m.sync_dir("").unwrap();
        m.durable_file("d/f", b"hello", Some("d"));
        // Unsynced bytes of a surviving file are lost, and counted.
        OpenOptions::new()
            .append(true)
            .open(m.path("d/f"))
            .unwrap()
            .write_all(b" world")
            .unwrap();
        assert_eq!(m.fs.crash(), 1);
        assert_eq!(fs::read(m.path("d/f")).unwrap(), b"hello");
        assert_eq!(m.fs.entries_lost(), 0);
    }

    #[test]
    fn an_unsynced_overwrite_in_place_is_lost() {
        // Same size before and after: nothing in the attributes tells the
        // kernel that its cached pages went stale at the crash.
        let Some(m) = mounted() else { return };
        m.durable_file("f", b"aaaa", Some(""));
        let mut f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
        f.write_all(b"bbbb").unwrap();
        drop(f);
        assert_eq!(fs::read(m.path("f")).unwrap(), b"bbbb");
        assert_eq!(m.fs.crash(), 1);
        assert_eq!(fs::read(m.path("f")).unwrap(), b"aaaa");
    }

    #[test]
    fn an_unlink_not_covered_by_fsyncdir_is_undone() {
        let Some(m) = mounted() else { return };
        m.durable_file("f", b"kept", Some(""));
        fs::remove_file(m.path("f")).unwrap();
        assert!(!m.path("f").exists());
        m.fs.crash();
        assert_eq!(fs::read(m.path("f")).unwrap(), b"kept");
        assert_eq!(m.fs.entries_lost(), 1);
        assert_eq!(m.fs.last_undone(), ["/f (removed)"]);
        // Covered by fsyncdir, it stays done.
        fs::remove_file(m.path("f")).unwrap();
        m.sync_dir("").unwrap();
        m.fs.crash();
        assert!(!m.path("f").exists());
    }

    #[test]
    fn rename_replaces_atomically_and_an_unsynced_one_is_undone() {
        let Some(m) = mounted() else { return };
        m.durable_file("target", b"old", Some(""));
        m.durable_file("tmp", b"new", None);
        fs::rename(m.path("tmp"), m.path("target")).unwrap();
        assert_eq!(fs::read(m.path("target")).unwrap(), b"new");
        m.fs.crash();
        // The replaced inode came back with its entry.
        assert_eq!(fs::read(m.path("target")).unwrap(), b"old");
        assert!(!m.path("tmp").exists());
        m.durable_file("tmp", b"new", None);
        fs::rename(m.path("tmp"), m.path("target")).unwrap();
        m.sync_dir("").unwrap();
        m.fs.crash();
        assert_eq!(fs::read(m.path("target")).unwrap(), b"new");
    }

    fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        let (a, b) = (c(from), c(to));
        // SAFETY: two valid NUL-terminated paths.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                flags,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[test]
    fn rename_exchange_and_noreplace() {
        let Some(m) = mounted() else { return };
        fs::create_dir(m.path("d")).unwrap();
        m.durable_file("a", b"A", None);
        m.durable_file("d/b", b"B", None);
        m.sync_dir("d").unwrap();
        m.sync_dir("").unwrap();
        renameat2(&m.path("a"), &m.path("d/b"), libc::RENAME_EXCHANGE).unwrap();
        assert_eq!(fs::read(m.path("a")).unwrap(), b"B");
        assert_eq!(fs::read(m.path("d/b")).unwrap(), b"A");
        // Exchanging a file and a directory works too.
        renameat2(&m.path("a"), &m.path("d"), libc::RENAME_EXCHANGE).unwrap();
        assert!(m.path("a").is_dir());
        assert_eq!(fs::read(m.path("a/b")).unwrap(), b"A");
        assert_eq!(fs::read(m.path("d")).unwrap(), b"B");
        renameat2(&m.path("a"), &m.path("d"), libc::RENAME_EXCHANGE).unwrap();
        assert_eq!(
            errno(renameat2(
                &m.path("a"),
                &m.path("nothing"),
                libc::RENAME_EXCHANGE
            )),
            libc::ENOENT
        );
        assert_eq!(
            errno(renameat2(
                &m.path("a"),
                &m.path("d/b"),
                libc::RENAME_NOREPLACE
            )),
            libc::EEXIST
        );
        renameat2(&m.path("a"), &m.path("c"), libc::RENAME_NOREPLACE).unwrap();
        assert_eq!(fs::read(m.path("c")).unwrap(), b"B");
        fs::rename(m.path("c"), m.path("a")).unwrap();
        // Both directories fsynced: the exchange survives a crash.
        m.sync_dir("d").unwrap();
        m.sync_dir("").unwrap();
        m.fs.crash();
        assert_eq!(fs::read(m.path("a")).unwrap(), b"B");
        assert_eq!(fs::read(m.path("d/b")).unwrap(), b"A");
        // An exchange that no fsyncdir covered is undone.
        renameat2(&m.path("a"), &m.path("d/b"), libc::RENAME_EXCHANGE).unwrap();
        assert_eq!(fs::read(m.path("a")).unwrap(), b"A");
        m.fs.crash();
        assert_eq!(fs::read(m.path("a")).unwrap(), b"B");
        assert_eq!(fs::read(m.path("d/b")).unwrap(), b"A");
        assert_eq!(m.fs.entries_lost(), 2);
    }

    #[test]
    fn hard_links_nlink_and_remove_dir_all() {
        let Some(m) = mounted() else { return };
        fs::create_dir_all(m.path("top/sub")).unwrap();
        assert_eq!(fs::metadata(m.path("top")).unwrap().nlink(), 3);
        for i in 0..300 {
            fs::write(m.path(&format!("top/sub/f{i:03}")), b"x").unwrap();
        }
        fs::hard_link(m.path("top/sub/f000"), m.path("top/link")).unwrap();
        assert_eq!(fs::metadata(m.path("top/link")).unwrap().nlink(), 2);
        assert_eq!(
            fs::metadata(m.path("top/link")).unwrap().ino(),
            fs::metadata(m.path("top/sub/f000")).unwrap().ino()
        );
        assert_eq!(errno(fs::remove_dir(m.path("top/sub"))), libc::ENOTEMPTY);
        fs::remove_file(m.path("top/sub/f000")).unwrap();
        assert_eq!(fs::metadata(m.path("top/link")).unwrap().nlink(), 1);
        fs::remove_dir_all(m.path("top")).unwrap();
        assert!(!m.path("top").exists());
        assert_eq!(fs::read_dir(m.path("")).unwrap().count(), 0);
    }

    #[test]
    fn sled_runs_on_it_and_keeps_what_it_flushed() {
        let Some(m) = mounted() else { return };
        {
            let db = sled::open(m.path("db")).unwrap();
            db.insert(b"k", b"v".as_slice()).unwrap();
            db.flush().unwrap();
        }
        // sled does not fsync the directories it creates: done here.
        for d in ["db", ""] {
            m.sync_dir(d).unwrap();
        }
        m.fs.crash();
        let db = sled::open(m.path("db")).unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(b"v".as_slice()));
    }

    #[test]
    fn an_injected_fsync_error_fails_and_leaves_nothing_durable() {
        let Some(m) = mounted() else { return };
        m.fs.inject(Fault {
            file: "wal".into(),
            op: FaultOp::Fsync,
            errno: libc::EIO,
            times: 1,
        });
        let mut f = File::create(m.path("the.wal")).unwrap();
        m.sync_dir("").unwrap();
        f.write_all(b"record").unwrap();
        assert_eq!(errno(f.sync_all()), libc::EIO);
        assert_eq!(m.fs.faults_hit(), 1);
        drop(f);
        m.fs.crash();
        assert_eq!(fs::read(m.path("the.wal")).unwrap(), b"");
        // Used up: the next fsync works.
        let mut f = OpenOptions::new()
            .write(true)
            .open(m.path("the.wal"))
            .unwrap();
        f.write_all(b"record").unwrap();
        f.sync_all().unwrap();
        drop(f);
        m.fs.crash();
        assert_eq!(fs::read(m.path("the.wal")).unwrap(), b"record");
        assert_eq!(m.fs.faults_hit(), 1);
    }

    #[test]
    fn faults_on_fsyncdir_create_and_read() {
        let Some(m) = mounted() else { return };
        fs::create_dir(m.path("spool")).unwrap();
        m.sync_dir("").unwrap();
        m.fs.inject(Fault {
            file: "spool".into(),
            op: FaultOp::FsyncDir,
            errno: libc::EIO,
            times: 1,
        });
        m.durable_file("spool/f", b"1", None);
        assert_eq!(errno(m.sync_dir("spool")), libc::EIO);
        m.fs.inject(Fault {
            file: ".eml".into(),
            op: FaultOp::Create,
            errno: libc::EACCES,
            times: 2,
        });
        assert_eq!(errno(File::create(m.path("spool/a.eml"))), libc::EACCES);
        assert_eq!(errno(File::create(m.path("b.eml"))), libc::EACCES);
        File::create(m.path("c.eml")).unwrap();
        m.fs.inject(Fault {
            file: "/f".into(),
            op: FaultOp::Read,
            errno: libc::EIO,
            times: 1,
        });
        assert_eq!(
            fs::read(m.path("spool/f")).unwrap(),
            b"1",
            "names do not hold /"
        );
        m.fs.clear_faults();
        // A buffered read that fails in readahead is tried once more by the
        // kernel: two faults fail one read(2).
        m.fs.inject(Fault {
            file: "f".into(),
            op: FaultOp::Read,
            errno: libc::EIO,
            times: 2,
        });
        assert_eq!(errno(fs::read(m.path("spool/f"))), libc::EIO);
        assert_eq!(m.fs.faults_hit(), 5);
        m.fs.crash();
        assert!(
            !m.path("spool/f").exists(),
            "the failed fsyncdir made nothing durable"
        );
    }

    #[test]
    fn a_partial_write_then_an_error() {
        let Some(m) = mounted() else { return };
        m.fs.inject(Fault {
            file: "seg".into(),
            op: FaultOp::PartialWrite,
            errno: libc::ENOSPC,
            times: 1,
        });
        let mut f = File::create(m.path("0001.seg")).unwrap();
        assert_eq!(f.write(&[7u8; 1000]).unwrap(), 500, "a short write");
        assert_eq!(errno(f.write(&[8u8; 10])), libc::ENOSPC);
        f.write_all(&[9u8; 4]).unwrap();
        drop(f);
        let got = fs::read(m.path("0001.seg")).unwrap();
        assert_eq!(got.len(), 504);
        assert!(got[..500].iter().all(|&b| b == 7) && got[500..] == [9; 4]);
        // write_all meets the short write, writes the rest, and fails.
        m.fs.inject(Fault {
            file: "seg".into(),
            op: FaultOp::PartialWrite,
            errno: libc::EIO,
            times: 1,
        });
        let mut f = File::create(m.path("0002.seg")).unwrap();
        assert_eq!(errno(f.write_all(&[1u8; 64])), libc::EIO);
        let mut got = Vec::new();
        File::open(m.path("0002.seg"))
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, [1u8; 32]);
        assert_eq!(m.fs.faults_hit(), 2);
    }

    #[test]
    fn freeze_then_crash_loses_what_was_synced_after_it() {
        let Some(m) = mounted() else { return };
        m.durable_file("f", b"before", Some(""));
        m.fs.freeze();
        assert!(m.fs.frozen());
        let mut f = OpenOptions::new().append(true).open(m.path("f")).unwrap();
        f.write_all(b" after").unwrap();
        f.sync_all().unwrap();
        drop(f);
        m.durable_file("g", b"new", Some(""));
        assert_eq!(fs::read(m.path("f")).unwrap(), b"before after");
        m.fs.crash();
        assert!(!m.fs.frozen(), "crash ends the freeze");
        assert_eq!(fs::read(m.path("f")).unwrap(), b"before");
        assert!(!m.path("g").exists());
        // Durable again after the crash.
        m.durable_file("g", b"new", Some(""));
        m.fs.crash();
        assert_eq!(fs::read(m.path("g")).unwrap(), b"new");
    }

    #[test]
    fn freeze_on_unlink_and_on_the_nth_fsync() {
        let Some(m) = mounted() else { return };
        m.durable_file("victim", b"v", None);
        m.durable_file("log", b"1", Some(""));
        m.fs.freeze_on(Trigger::Unlink {
            file: "victim".into(),
        });
        let mut log = OpenOptions::new().append(true).open(m.path("log")).unwrap();
        log.write_all(b"2").unwrap();
        log.sync_all().unwrap();
        assert!(!m.fs.frozen());
        fs::remove_file(m.path("victim")).unwrap();
        assert!(m.fs.frozen(), "frozen just after the unlink");
        log.write_all(b"3").unwrap();
        log.sync_all().unwrap();
        m.sync_dir("").unwrap();
        drop(log);
        m.fs.crash();
        assert_eq!(fs::read(m.path("victim")).unwrap(), b"v", "unlink undone");
        assert_eq!(fs::read(m.path("log")).unwrap(), b"12");

        m.fs.freeze_on(Trigger::Fsync {
            file: "log".into(),
            nth: 2,
        });
        let mut log = OpenOptions::new().append(true).open(m.path("log")).unwrap();
        log.write_all(b"3").unwrap();
        log.sync_all().unwrap();
        assert!(!m.fs.frozen());
        log.write_all(b"4").unwrap();
        log.sync_all().unwrap();
        assert!(m.fs.frozen(), "frozen at the second fsync");
        drop(log);
        m.fs.crash();
        assert_eq!(fs::read(m.path("log")).unwrap(), b"123");
    }
}

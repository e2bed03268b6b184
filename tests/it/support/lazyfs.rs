//! A FUSE filesystem that loses what was not fsynced when told to crash: the
//! idea of LazyFS (which Jepsen uses), small enough for a test.
//!
//! Everything lives in memory. Each file has the bytes the processes see
//! (`current`) and the bytes that would survive a power cut (`durable`):
//! `fsync`/`fdatasync` copies current to durable; `crash` throws away every
//! file's unsynced bytes. Directory entries (create, unlink, rename, mkdir)
//! are durable at once: this models lost data, not lost metadata.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;

enum Kind {
    File { current: Vec<u8>, durable: Vec<u8> },
    Dir { entries: BTreeMap<OsString, u64> },
}

struct Node {
    kind: Kind,
    perm: u16,
}

struct State {
    nodes: HashMap<u64, Node>,
    next: u64,
    /// fsync calls seen, for the test's own sanity.
    fsyncs: u64,
}

impl State {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &n.kind {
            Kind::File { current, .. } => (FileType::RegularFile, current.len() as u64, 1),
            Kind::Dir { .. } => (FileType::Directory, 0, 2),
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

    fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        match &self.nodes.get(&parent)?.kind {
            Kind::Dir { entries } => entries.get(name).copied(),
            Kind::File { .. } => None,
        }
    }

    fn add(&mut self, parent: u64, name: &OsStr, kind: Kind, perm: u16) -> Result<u64, i32> {
        let ino = self.next;
        let Some(Node {
            kind: Kind::Dir { entries },
            ..
        }) = self.nodes.get_mut(&parent)
        else {
            return Err(libc::ENOTDIR);
        };
        if entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        entries.insert(name.to_os_string(), ino);
        self.next += 1;
        self.nodes.insert(ino, Node { kind, perm });
        Ok(ino)
    }

    fn file(&mut self, ino: u64) -> Result<(&mut Vec<u8>, &mut Vec<u8>), i32> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File { current, durable }) => Ok((current, durable)),
            Some(Kind::Dir { .. }) => Err(libc::EISDIR),
            None => Err(libc::ENOENT),
        }
    }
}

struct LazyFs(Arc<Mutex<State>>);

impl Filesystem for LazyFs {
    fn lookup(&mut self, _r: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let s = self.0.lock().unwrap();
        match s.child(parent, name).and_then(|i| s.attr(i)) {
            Some(a) => reply.entry(&TTL, &a, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _r: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.0.lock().unwrap().attr(ino) {
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
        let mut s = self.0.lock().unwrap();
        if let Some(size) = size {
            match s.file(ino) {
                Ok((current, _)) => current.resize(size as usize, 0),
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
        let mut s = self.0.lock().unwrap();
        let dir = Kind::Dir {
            entries: BTreeMap::new(),
        };
        match s.add(parent, name, dir, (mode & 0o7777) as u16) {
            Ok(ino) => reply.entry(&TTL, &s.attr(ino).unwrap(), 0),
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
        let mut s = self.0.lock().unwrap();
        let ino = match s.child(parent, name) {
            Some(_) if flags & libc::O_EXCL != 0 => return reply.error(libc::EEXIST),
            Some(ino) => {
                if flags & libc::O_TRUNC != 0 {
                    if let Ok((current, _)) = s.file(ino) {
                        current.clear();
                    }
                }
                ino
            }
            None => {
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
        reply.created(&TTL, &s.attr(ino).unwrap(), 0, 0, 0);
    }

    fn open(&mut self, _r: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mut s = self.0.lock().unwrap();
        if flags & libc::O_TRUNC != 0 {
            if let Ok((current, _)) = s.file(ino) {
                current.clear();
            }
        }
        reply.opened(0, 0);
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
        let mut s = self.0.lock().unwrap();
        match s.file(ino) {
            Ok((current, _)) => {
                let start = (offset as usize).min(current.len());
                let end = (start + size as usize).min(current.len());
                reply.data(&current[start..end]);
            }
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
        let mut s = self.0.lock().unwrap();
        match s.file(ino) {
            Ok((current, _)) => {
                let end = offset as usize + data.len();
                if current.len() < end {
                    current.resize(end, 0);
                }
                current[offset as usize..end].copy_from_slice(data);
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _r: &Request<'_>, _ino: u64, _fh: u64, _l: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&mut self, _r: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let mut s = self.0.lock().unwrap();
        s.fsyncs += 1;
        match s.file(ino) {
            Ok((current, durable)) => {
                durable.clone_from(current);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &mut self,
        _r: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &mut self,
        _r: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let s = self.0.lock().unwrap();
        let Some(Node {
            kind: Kind::Dir { entries },
            ..
        }) = s.nodes.get(&ino)
        else {
            return reply.error(libc::ENOTDIR);
        };
        let mut all = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (ino, FileType::Directory, OsString::from("..")),
        ];
        for (name, child) in entries {
            let kind = match s.nodes.get(child).map(|n| &n.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((*child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn unlink(&mut self, _r: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.0.lock().unwrap();
        let removed = match s.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            Some(Kind::Dir { entries }) => entries.remove(name),
            _ => None,
        };
        match removed {
            Some(ino) => {
                s.nodes.remove(&ino);
                reply.ok()
            }
            None => reply.error(libc::ENOENT),
        }
    }

    fn rmdir(&mut self, r: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.unlink(r, parent, name, reply)
    }

    fn rename(
        &mut self,
        _r: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        _f: u32,
        reply: ReplyEmpty,
    ) {
        let mut s = self.0.lock().unwrap();
        let Some(ino) = (match s.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            Some(Kind::Dir { entries }) => entries.remove(name),
            _ => None,
        }) else {
            return reply.error(libc::ENOENT);
        };
        let replaced = match s.nodes.get_mut(&newparent).map(|n| &mut n.kind) {
            Some(Kind::Dir { entries }) => entries.insert(newname.to_os_string(), ino),
            _ => return reply.error(libc::ENOTDIR),
        };
        if let Some(old) = replaced {
            s.nodes.remove(&old);
        }
        reply.ok();
    }

    fn statfs(&mut self, _r: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        // 64 GiB, nearly all free: the spool's free-space limits stay out of the way.
        reply.statfs(1 << 24, 1 << 24, 1 << 24, 1 << 20, 1 << 20, 4096, 255, 4096);
    }
}

/// A mounted LazyFs; unmounted when dropped.
pub struct Mounted {
    state: Arc<Mutex<State>>,
    _session: fuser::BackgroundSession,
}

impl Mounted {
    /// Simulated power cut: every byte not fsynced is gone.
    pub fn crash(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        let mut lost = 0;
        for n in s.nodes.values_mut() {
            if let Kind::File { current, durable } = &mut n.kind {
                if current != durable {
                    lost += 1;
                    current.clone_from(durable);
                }
            }
        }
        lost
    }

    pub fn fsyncs(&self) -> u64 {
        self.state.lock().unwrap().fsyncs
    }
}

pub fn mount(dir: &Path) -> std::io::Result<Mounted> {
    let root = Node {
        kind: Kind::Dir {
            entries: BTreeMap::new(),
        },
        perm: 0o755,
    };
    let state = Arc::new(Mutex::new(State {
        nodes: HashMap::from([(ROOT, root)]),
        next: ROOT + 1,
        fsyncs: 0,
    }));
    let session = fuser::spawn_mount2(
        LazyFs(state.clone()),
        dir,
        &[MountOption::FSName("lazyfs".into()), MountOption::RW],
    )?;
    Ok(Mounted {
        state,
        _session: session,
    })
}

//! The FUSE side: each request of the kernel applied to the [`State`].

use std::ffi::{OsStr, OsString};
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::{
    FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use super::state::*;
use super::FaultOp;

pub(super) struct LazyFs(pub(super) Arc<Mutex<State>>);

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

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
//!
//! Files: `state.rs` holds the inodes, their two versions and the crash;
//! `fuse.rs` answers the kernel's FUSE requests from that state.

mod fuse;
mod state;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::MountOption;

use fuse::LazyFs;
use state::State;

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

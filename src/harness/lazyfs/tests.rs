//! LazyFs's own tests: each mounts a fresh filesystem in a temporary directory.

use super::*;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
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

/// A fresh LazyFs; every test here is ignored where FUSE is missing.
fn mounted() -> Mnt {
    assert!(
        available(),
        "/dev/fuse and /usr/bin/fusermount3 are missing: install the Debian package `fuse3`"
    );
    let dir = tempfile::Builder::new()
        .prefix("mailspool-lazyfs")
        .tempdir()
        .unwrap();
    let fs = mount(dir.path()).expect("mount LazyFs");
    Mnt { fs, dir }
}

fn errno(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
    r.expect_err("an error")
        .raw_os_error()
        .expect("an OS error")
}

#[test]
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn a_synced_file_in_an_unsynced_directory_is_gone_after_a_crash() {
    let m = mounted();
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
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn fsyncdir_makes_the_entry_survive() {
    let m = mounted();
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
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn an_unsynced_overwrite_in_place_is_lost() {
    // Same size before and after: nothing in the attributes tells the
    // kernel that its cached pages went stale at the crash.
    let m = mounted();
    m.durable_file("f", b"aaaa", Some(""));
    let mut f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    f.write_all(b"bbbb").unwrap();
    drop(f);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"bbbb");
    assert_eq!(m.fs.crash(), 1);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"aaaa");
}

#[test]
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn an_unlink_not_covered_by_fsyncdir_is_undone() {
    let m = mounted();
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
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn rename_replaces_atomically_and_an_unsynced_one_is_undone() {
    let m = mounted();
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
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn rename_exchange_and_noreplace() {
    let m = mounted();
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
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn hard_links_nlink_and_remove_dir_all() {
    let m = mounted();
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
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn sled_runs_on_it_and_keeps_what_it_flushed() {
    let m = mounted();
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
    // sled lets go of its lock from a background thread, a moment after
    // the last handle is dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let db = loop {
        match sled::open(m.path("db")) {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("lock"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(b"v".as_slice()));
}

#[test]
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn an_injected_fsync_error_fails_and_leaves_nothing_durable() {
    let m = mounted();
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
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn faults_on_fsyncdir_create_and_read() {
    let m = mounted();
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
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn a_partial_write_then_an_error() {
    let m = mounted();
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
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn freeze_then_crash_loses_what_was_synced_after_it() {
    let m = mounted();
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
#[cfg_attr(
    not(have_fuse),
    ignore = "needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)"
)]
fn freeze_on_unlink_and_on_the_nth_fsync() {
    let m = mounted();
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

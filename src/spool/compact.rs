//! `mailspool compact`: gives back the disk space sled keeps after a drain.
//!
//! sled 0.34 reuses freed space but never shrinks its files: after a surge
//! drains, the index stays at its high-water mark. Bodies live in segment
//! files that are deleted as they empty, so only the index needs this.
//!
//! Offline (sled's lock refuses a running server's spool): every tree is
//! copied into a fresh sled directory (`Db::export`/`import`), the segment
//! files are hard-linked next to it, both are fsynced, and the new directory
//! is swapped with the old one in one atomic `renameat2(RENAME_EXCHANGE)`.
//! A crash at any point leaves either the old or the new spool in place.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Bytes before and after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compacted {
    pub before: u64,
    pub after: u64,
    pub seconds: f64,
}

fn sled_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name() != "segments")
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Compacts the spool of `data_dir` (the server must be stopped).
pub fn compact(data_dir: &Path) -> Result<Compacted, Error> {
    let started = Instant::now();
    let spool = data_dir.join("spool");
    let fresh = data_dir.join("spool.compact");
    if !spool.join("db").exists() {
        return Err(format!("no spool in {}", data_dir.display()).into());
    }
    if fresh.exists() {
        // Left over from an interrupted run: the old spool is still in place.
        std::fs::remove_dir_all(&fresh)?;
    }
    let before = sled_bytes(&spool);
    let old = crate::spool::open_sled(&sled::Config::new().path(&spool)).map_err(|e| {
        format!(
            "cannot open {} ({e}); stop the server that uses it first",
            spool.display()
        )
    })?;
    let new = sled::Config::new().path(&fresh).create_new(true).open()?;
    new.import(old.export());
    new.flush()?;
    drop(new);
    drop(old);
    // Everything sled wrote, blobs (large values, such as big dead
    // letters) included, is durable before the old copy can go.
    sync_tree(&fresh)?;
    std::fs::create_dir_all(fresh.join("segments"))?;
    if let Ok(entries) = std::fs::read_dir(spool.join("segments")) {
        for e in entries.flatten() {
            std::fs::hard_link(e.path(), fresh.join("segments").join(e.file_name()))?;
        }
    }
    File::open(fresh.join("segments"))?.sync_all()?;
    File::open(&fresh)?.sync_all()?;
    exchange(&spool, &fresh)?;
    File::open(data_dir)?.sync_all()?;
    // `fresh` now holds the old spool.
    std::fs::remove_dir_all(&fresh)?;
    Ok(Compacted {
        before,
        after: sled_bytes(&spool),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// fsyncs every file and directory under `dir` (and `dir` itself).
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

/// Atomically swaps two directories.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; AT_FDCWD resolves them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

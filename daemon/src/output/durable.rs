//! Durable file writes, shared by the local store and the spool: a file is
//! written under a temporary name and fdatasynced, renamed into place, and
//! its directory fsynced, so that once a write is reported done it
//! survives a crash or a power loss, and a crash before that leaves no
//! half-written file under the final name.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Creates (or truncates) `path` for writing.
pub fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Creates (or truncates) `path`, writes `data` and fdatasyncs it.
pub fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = create(path)?;
    f.write_all(data)?;
    f.sync_data()
}

/// fsyncs a directory, making the renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `data` atomically and durably: `tmp` written and
/// synced, renamed onto `path`, then `path`'s directory synced. `tmp` must
/// be in the same directory. On failure `tmp` is removed (best effort).
pub fn replace(tmp: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
    let result = write_synced(tmp, data).and_then(|()| std::fs::rename(tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_writes_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("kiroku-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let (tmp, fin) = (dir.join("a.tmp"), dir.join("a"));
        replace(&tmp, &fin, b"one").expect("first");
        replace(&tmp, &fin, b"two").expect("second");
        assert_eq!(std::fs::read(&fin).expect("read"), b"two");
        assert!(!tmp.exists());
        let missing = dir.join("no-such-dir").join("b");
        assert!(replace(&missing.with_extension("tmp"), &missing, b"x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

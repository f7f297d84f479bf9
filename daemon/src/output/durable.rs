//! Durable file writes, shared by the local store and the spool: a file is
//! written under a temporary name and fdatasynced, renamed into place, and
//! its directory fsynced, so that once a write is reported done it
//! survives a crash or a power loss, and a crash before that leaves no
//! half-written file under the final name.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Who may read a file kiroku writes (docs/security.md, "What is kept at
/// rest").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `0600`, whatever the umask: the state store, upload targets and the
    /// spool hold customer keys and unpublished media.
    Private,
    /// `0666` less the umask: recordings the operator serves or collects.
    Shared,
}

impl Access {
    fn mode(self) -> u32 {
        match self {
            Access::Private => 0o600,
            Access::Shared => 0o666,
        }
    }
}

/// Creates (or truncates) `path` for writing.
pub fn create(path: &Path, access: Access) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(access.mode())
        .open(path)
}

/// What a file is made of: bytes in memory, optionally followed by the
/// whole of another file. A packed MP4 is its header (made last) and the
/// payload the packer spilled to disk as it went, so a 2 GB file is
/// written without ever being held in memory.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    pub head: &'a [u8],
    pub tail: Option<&'a Path>,
}

impl<'a> Content<'a> {
    pub fn bytes(data: &'a [u8]) -> Self {
        Self {
            head: data,
            tail: None,
        }
    }

    /// `head` then the contents of `tail`.
    pub fn spilled(head: &'a [u8], tail: &'a Path) -> Self {
        Self {
            head,
            tail: Some(tail),
        }
    }

    /// The whole length (the tail's size as it is now).
    pub fn len(&self) -> io::Result<u64> {
        let tail = match self.tail {
            Some(p) => std::fs::metadata(p)?.len(),
            None => 0,
        };
        Ok(self.head.len() as u64 + tail)
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// Writes the whole content to `out`: the tail is copied by the kernel
    /// where it can (`copy_file_range`), in bounded pieces otherwise.
    pub fn write_to(&self, out: &mut File) -> io::Result<()> {
        out.write_all(self.head)?;
        if let Some(tail) = self.tail {
            let mut src = File::open(tail)?;
            io::copy(&mut src, out)?;
        }
        Ok(())
    }

    /// The whole content in memory (small objects, tests).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut all = self.head.to_vec();
        if let Some(tail) = self.tail {
            all.extend_from_slice(&std::fs::read(tail)?);
        }
        Ok(all)
    }
}

/// Creates (or truncates) `path`, writes `data` and fdatasyncs it.
pub fn write_synced(path: &Path, data: &[u8], access: Access) -> io::Result<()> {
    write_content_synced(path, Content::bytes(data), access)
}

/// Creates (or truncates) `path`, writes `content` and fdatasyncs it.
pub fn write_content_synced(path: &Path, content: Content<'_>, access: Access) -> io::Result<()> {
    let mut f = create(path, access)?;
    content.write_to(&mut f)?;
    f.sync_data()
}

/// Creates `dir` (and missing parents) for kiroku alone: `0700`, also when
/// it exists already with a looser mode (an older version, another umask).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Makes an existing file `0600` (one created by a library that takes no
/// mode, or by an older version).
pub fn make_private(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// fsyncs a directory, making the renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `data` atomically and durably: `tmp` written and
/// synced, renamed onto `path`, then `path`'s directory synced. `tmp` must
/// be in the same directory. On failure `tmp` is removed (best effort).
pub fn replace(tmp: &Path, path: &Path, data: &[u8], access: Access) -> io::Result<()> {
    replace_content(tmp, path, Content::bytes(data), access)
}

/// [`replace`] with [`Content`].
pub fn replace_content(
    tmp: &Path,
    path: &Path,
    content: Content<'_>,
    access: Access,
) -> io::Result<()> {
    let result =
        write_content_synced(tmp, content, access).and_then(|()| std::fs::rename(tmp, path));
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
        replace(&tmp, &fin, b"one", Access::Shared).expect("first");
        replace(&tmp, &fin, b"two", Access::Shared).expect("second");
        assert_eq!(std::fs::read(&fin).expect("read"), b"two");
        assert!(!tmp.exists());
        let spilled = dir.join("payload");
        std::fs::write(&spilled, b" and three").expect("payload");
        let content = Content::spilled(b"two", &spilled);
        assert_eq!(content.len().expect("len"), 13);
        replace_content(&tmp, &fin, content, Access::Shared).expect("spilled");
        assert_eq!(std::fs::read(&fin).expect("read"), b"two and three");
        let missing = dir.join("no-such-dir").join("b");
        assert!(replace(
            &missing.with_extension("tmp"),
            &missing,
            b"x",
            Access::Shared
        )
        .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    /// Private files and directories get no group or other bits, whatever
    /// the umask lets through (the test process's umask leaves at least
    /// 0644/0755, so a forgotten mode shows).
    #[test]
    fn private_files_and_directories_are_the_owners_alone() {
        let dir = std::env::temp_dir().join(format!("kiroku-durable-mode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let private = dir.join("spool");
        private_dir(&private).expect("private dir");
        assert_eq!(mode(&private), 0o700);
        // An existing, looser directory is tightened.
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&private).expect("again");
        assert_eq!(mode(&private), 0o700);
        let (tmp, fin) = (private.join("k.tmp"), private.join("k"));
        replace(&tmp, &fin, b"secret", Access::Private).expect("private file");
        assert_eq!(mode(&fin), 0o600);
        let shared = dir.join("s");
        write_synced(&shared, b"media", Access::Shared).expect("shared file");
        assert_ne!(
            mode(&shared) & 0o044,
            0,
            "shared files keep the umask's read bits"
        );
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        make_private(&shared).expect("make private");
        assert_eq!(mode(&shared), 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The local-filesystem store: `<root>/<object key>`, written to a
//! temporary file, fsynced, renamed into place (atomic on POSIX) and the
//! directory fsynced (`output::durable`), so a crash never leaves a
//! half-written playlist or segment behind, nor loses one reported stored.

use std::path::PathBuf;

use super::{check_key, durable, Content, Store, StoreError};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

impl Store for LocalStore {
    fn put_content(&self, key: &str, content: Content<'_>) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let io = |source: std::io::Error| {
            // ENOSPC, EDQUOT: the task cannot go on (it fails loudly).
            if matches!(source.raw_os_error(), Some(28 | 122)) {
                StoreError::Full(format!("{}: {source}", path.display()))
            } else {
                StoreError::Io {
                    path: path.clone(),
                    source,
                }
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension(format!(
            "{}.tmp",
            path.extension().and_then(|e| e.to_str()).unwrap_or("part")
        ));
        // Synced, renamed and the directory synced: a file reported by 304
        // or Describe survives a power loss.
        durable::replace_content(&tmp, &path, content, durable::Access::Shared).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_replaces() {
        let root = std::env::temp_dir().join(format!("kiroku-local-{}", std::process::id()));
        let s = LocalStore::new(&root);
        s.put("p/t/a.m3u8", b"one").expect("put");
        s.put("p/t/a.m3u8", b"two").expect("replace");
        assert_eq!(
            std::fs::read(root.join("p/t/a.m3u8")).expect("read"),
            b"two"
        );
        let leftovers: Vec<_> = std::fs::read_dir(root.join("p/t")).expect("dir").collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left");
        assert!(matches!(s.put("../x", b""), Err(StoreError::BadKey(_))));
        let _ = std::fs::remove_dir_all(&root);
    }
}

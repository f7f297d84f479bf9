//! The packer's output on disk as it comes: each file's payload (the
//! `mdat` contents) is appended to a scratch file while packing goes on,
//! and when the packer closes the file its header joins it as a
//! [`SpilledFile`], which a [`Store`](super::Store) writes as header +
//! payload ([`Content`]). A packing job therefore holds one chunk and the
//! sample tables in memory, never the file: a 2 GB MP4 packs in a few MB.
//!
//! Scratch files live in one folder (`data_dir/packing`, emptied at
//! start: what a crash left there is only ever a copy) and are removed
//! when their [`SpilledFile`] (or the [`Spill`] still writing one) is
//! dropped.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{durable, Content};
use crate::media::mp4::{FileFacts, PackOutput};

/// Buffer between the packer's chunks and the scratch file.
const WRITE_BUFFER: usize = 256 * 1024;

/// Writes one packing job's payloads to scratch files.
pub struct Spill {
    dir: PathBuf,
    stem: String,
    files: u32,
    open: Option<Open>,
}

struct Open {
    writer: BufWriter<File>,
    path: PathBuf,
    written: u64,
}

/// A closed file: its header in memory, its payload in a scratch file.
#[derive(Debug)]
pub struct SpilledFile {
    pub header: Vec<u8>,
    pub payload: PathBuf,
    pub facts: FileFacts,
}

impl SpilledFile {
    /// The whole file, for a store.
    pub fn content(&self) -> Content<'_> {
        Content::spilled(&self.header, &self.payload)
    }

    /// Header and payload bytes together.
    pub fn len(&self) -> io::Result<u64> {
        self.content().len()
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        self.content().is_empty()
    }
}

impl Drop for SpilledFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.payload);
    }
}

impl Spill {
    /// Spills into `dir` (created, private) under names that start with
    /// `stem`; two jobs at once need two stems.
    pub fn new(dir: &Path, stem: &str) -> io::Result<Self> {
        durable::private_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            stem: stem
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect(),
            files: 0,
            open: None,
        })
    }

    /// Writes the payloads in `outputs` and returns the files they closed.
    pub fn take(&mut self, outputs: Vec<PackOutput>) -> io::Result<Vec<SpilledFile>> {
        let mut closed = Vec::new();
        for output in outputs {
            match output {
                PackOutput::Payload(bytes) => {
                    let open = self.open()?;
                    open.writer.write_all(&bytes)?;
                    open.written += bytes.len() as u64;
                }
                PackOutput::Closed(file) => {
                    // A file with no payload (never from the packer: a
                    // file has samples) still gets its scratch file.
                    self.open()?;
                    let Some(open) = self.open.take() else {
                        continue;
                    };
                    let path = open.path.clone();
                    let written = open.written;
                    let spilled = SpilledFile {
                        header: file.header,
                        payload: path,
                        facts: file.facts,
                    };
                    open.writer.into_inner().map_err(|e| e.into_error())?;
                    if written != file.payload_len {
                        return Err(io::Error::other(format!(
                            "spilled {written} payload bytes where the packer made {}",
                            file.payload_len
                        )));
                    }
                    closed.push(spilled);
                }
            }
        }
        Ok(closed)
    }

    fn open(&mut self) -> io::Result<&mut Open> {
        if self.open.is_none() {
            self.files += 1;
            let path = self.dir.join(format!("{}-{}.mdat", self.stem, self.files));
            let file = durable::create(&path, durable::Access::Private)?;
            self.open = Some(Open {
                writer: BufWriter::with_capacity(WRITE_BUFFER, file),
                path,
                written: 0,
            });
        }
        self.open
            .as_mut()
            .ok_or_else(|| io::Error::other("no open spill file"))
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            let path = open.path.clone();
            drop(open);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Empties the scratch folder at start: nothing in it is ever the only
/// copy of anything.
pub fn clear(dir: &Path) -> io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "mdat") {
                    std::fs::remove_file(&path)?;
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::mp4::{Assembler, ClosedFile};

    fn facts(index: u32) -> FileFacts {
        FileFacts {
            index,
            start_ms: 0,
            duration_ms: 1,
            has_video: true,
            has_audio: false,
            video_frames: 1,
            audio_frames: 0,
        }
    }

    fn closed(index: u32, header: &[u8], payload_len: u64) -> PackOutput {
        PackOutput::Closed(ClosedFile {
            header: header.to_vec(),
            payload_len,
            facts: facts(index),
        })
    }

    #[test]
    fn files_come_out_as_the_assembler_makes_them_and_scratch_files_go() {
        let dir = std::env::temp_dir().join(format!("kiroku-spill-{}", rand::random::<u64>()));
        let outputs = vec![
            PackOutput::Payload(b"abc".to_vec()),
            PackOutput::Payload(b"def".to_vec()),
            closed(1, b"H1", 6),
            PackOutput::Payload(b"xyz".to_vec()),
            closed(2, b"H2", 3),
            PackOutput::Payload(b"open".to_vec()),
        ];
        let whole = Assembler::default().files(outputs.clone());
        let mut spill = Spill::new(&dir, "task/1").expect("spill");
        let files = spill.take(outputs).expect("take");
        assert_eq!(files.len(), 2);
        for (f, w) in files.iter().zip(&whole) {
            assert_eq!(f.content().to_vec().expect("read"), w.data);
            assert_eq!(f.facts.index, w.index);
            assert!(f.payload.starts_with(&dir));
        }
        let names = |d: &Path| std::fs::read_dir(d).expect("dir").count();
        assert_eq!(names(&dir), 3, "two closed files and the open one");
        drop(files);
        assert_eq!(names(&dir), 1, "the open one");
        drop(spill);
        assert_eq!(names(&dir), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_payload_that_does_not_add_up_is_an_error() {
        let dir = std::env::temp_dir().join(format!("kiroku-spill-{}", rand::random::<u64>()));
        let mut spill = Spill::new(&dir, "t").expect("spill");
        let r = spill.take(vec![PackOutput::Payload(b"ab".to_vec()), closed(0, b"", 3)]);
        assert!(r.is_err());
        std::fs::write(dir.join("stale-1.mdat"), b"x").expect("stale");
        std::fs::write(dir.join("keep.txt"), b"x").expect("other");
        clear(&dir).expect("clear");
        assert!(!dir.join("stale-1.mdat").exists());
        assert!(dir.join("keep.txt").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

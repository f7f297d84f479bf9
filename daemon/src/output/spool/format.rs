//! The entry format (`<id>.ent`: magic, lengths, task id, object key,
//! payload) and recovery of a spool directory after a crash: half-written
//! temporary files removed, damaged entries set aside, the index rebuilt.
//! No threads, no io_uring.

use super::*;

#[cfg(test)]
pub(super) fn encode(task: &str, key: &str, data: &[u8]) -> Vec<u8> {
    let mut buf = encode_header(task, key, data.len() as u64, data.len());
    buf.extend_from_slice(data);
    buf
}

/// The header of an entry whose payload is `data_len` bytes (names at
/// most [`MAX_NAME`], so the lengths fit), with room for `reserve` more.
pub(super) fn encode_header(task: &str, key: &str, data_len: u64, reserve: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(FIXED_HEADER + task.len() + key.len() + reserve);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&(task.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(&data_len.to_le_bytes());
    buf.extend_from_slice(task.as_bytes());
    buf.extend_from_slice(key.as_bytes());
    buf
}

pub(super) struct Header {
    pub(super) task: String,
    pub(super) key: String,
    pub(super) data_len: u64,
    /// Header bytes, names included.
    pub(super) len: usize,
}

/// Parses a header from the start of an entry file of `file_len` bytes.
pub(super) fn decode_header(raw: &[u8], file_len: u64) -> Result<Header, String> {
    let fixed = raw
        .get(..FIXED_HEADER)
        .ok_or_else(|| "shorter than a header".to_owned())?;
    if &fixed[..8] != MAGIC {
        return Err("bad magic".to_owned());
    }
    let u32_at = |at: usize| -> usize {
        let mut b = [0u8; 4];
        b.copy_from_slice(&fixed[at..at + 4]);
        u32::from_le_bytes(b) as usize
    };
    let (task_len, key_len) = (u32_at(8), u32_at(12));
    let mut b = [0u8; 8];
    b.copy_from_slice(&fixed[16..24]);
    let data_len = u64::from_le_bytes(b);
    if task_len > MAX_NAME || key_len > MAX_NAME {
        return Err("names too long".to_owned());
    }
    let len = FIXED_HEADER + task_len + key_len;
    if (len as u64).checked_add(data_len) != Some(file_len) {
        return Err(format!(
            "{file_len} bytes on disk, header says {}",
            len as u64 + data_len
        ));
    }
    let names = raw
        .get(FIXED_HEADER..len)
        .ok_or_else(|| "truncated names".to_owned())?;
    let (task, key) = names.split_at(task_len);
    let task = String::from_utf8(task.to_vec()).map_err(|_| "task id not UTF-8".to_owned())?;
    let key = String::from_utf8(key.to_vec()).map_err(|_| "key not UTF-8".to_owned())?;
    check_key(&key).map_err(|_| format!("bad key {key:?}"))?;
    Ok(Header {
        task,
        key,
        data_len,
        len,
    })
}

/// Reads an entry file's header.
pub(super) fn read_header(path: &Path) -> Result<Header, String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let file_len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut raw = vec![0u8; FIXED_HEADER + 2 * MAX_NAME];
    let mut got = 0;
    while got < raw.len() {
        match f.read(&mut raw[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    raw.truncate(got);
    decode_header(&raw, file_len)
}

/// Scans the spool directory: keeps finished entries, removes temporary
/// files and orphaned retry states, sets corrupt entries aside.
pub(super) fn recover(dir: &Path) -> Result<(State, EntryId, Recovery), SpoolError> {
    let mut rec = Recovery::default();
    let mut state = State::default();
    let mut next_id: EntryId = 0;
    let mut retries: Vec<(EntryId, PathBuf)> = Vec::new();
    for dent in fs::read_dir(dir).map_err(io_err(dir))? {
        let dent = dent.map_err(io_err(dir))?;
        let path = dent.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((stem, ext)) = name.split_once('.') else {
            continue;
        };
        let Ok(id) = EntryId::from_str_radix(stem, 16) else {
            continue;
        };
        if stem.len() != 16 {
            continue;
        }
        next_id = next_id.max(id.saturating_add(1));
        match ext {
            "tmp" | "retry.tmp" => {
                fs::remove_file(&path).map_err(io_err(&path))?;
                rec.temp_removed += 1;
            }
            "retry" => retries.push((id, path)),
            "ent" => match read_header(&path) {
                Ok(h) => {
                    let file_len = h.len as u64 + h.data_len;
                    state.used += file_len;
                    state.index.insert(
                        id,
                        Meta {
                            task: h.task,
                            key: h.key,
                            data_len: h.data_len,
                            file_len,
                            retry: RetryState::default(),
                        },
                    );
                }
                // Gone meanwhile: in a fleet's shared spool, the box that
                // took a room over uploaded and removed it.
                Err(_) if !path.exists() => {}
                Err(reason) => {
                    let aside = path.with_extension("corrupt");
                    tracing::error!(path = %path.display(), %reason, "spool: corrupt entry set aside");
                    fs::rename(&path, &aside).map_err(io_err(&path))?;
                    rec.corrupt.push(aside);
                }
            },
            _ => {}
        }
    }
    for (id, path) in retries {
        match state.index.get_mut(&id) {
            None => match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                _ => rec.orphans_removed += 1,
            },
            Some(meta) => {
                match fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                {
                    Ok(r) => meta.retry = r,
                    Err(reason) => {
                        tracing::warn!(path = %path.display(), %reason, "spool: unreadable retry state ignored");
                        rec.bad_retry_states += 1;
                    }
                }
            }
        }
    }
    rec.entries = state.index.len();
    Ok((state, next_id, rec))
}

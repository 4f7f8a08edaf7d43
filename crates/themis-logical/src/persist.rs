//! Slot state files: one per slot under `<wal_dir>/logical_slots`, each replaced whole and
//! crash-safely (write a temporary file, fsync it, rename it over the old one, fsync the
//! directory), so a crash leaves either the old state or the new one.
//!
//! A file is a header line, then JSON:
//!
//! ```text
//! themis-slot 1 <crc32c of the JSON, 8 hex digits> <JSON length in bytes>\n
//! <JSON>
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::LogicalError;

const MAGIC: &str = "themis-slot";
const VERSION: u32 = 1;
/// The largest state file read (a slot's state is a few kilobytes).
const MAX_FILE: u64 = 16 << 20;

/// The directory of state files.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating) the directory and removes temporary files a crash left.
    pub(crate) fn open(dir: &Path) -> Result<StateDir, LogicalError> {
        fs::create_dir_all(dir).map_err(LogicalError::io("create", dir))?;
        for entry in fs::read_dir(dir).map_err(LogicalError::io("list", dir))? {
            let path = entry.map_err(LogicalError::io("list", dir))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path).map_err(LogicalError::io("remove", &path))?;
            }
        }
        Ok(StateDir { dir: dir.to_path_buf() })
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Replaces `file` with `value`, durably.
    pub(crate) fn save<T: Serialize>(&self, file: &str, value: &T) -> Result<(), LogicalError> {
        let json = serde_json::to_vec_pretty(value).expect("state serializes");
        let mut bytes =
            format!("{MAGIC} {VERSION} {:08x} {}\n", crc32c::crc32c(&json), json.len()).into_bytes();
        bytes.extend_from_slice(&json);
        bytes.push(b'\n');
        let path = self.path(file);
        let tmp = self.path(&format!("{file}.tmp"));
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(LogicalError::io("create", &tmp))?;
        out.write_all(&bytes).map_err(LogicalError::io("write", &tmp))?;
        out.sync_all().map_err(LogicalError::io("fsync", &tmp))?;
        drop(out);
        fs::rename(&tmp, &path).map_err(LogicalError::io("rename", &path))?;
        self.sync()
    }

    /// Removes `file`, durably; a missing file is not an error.
    pub(crate) fn remove(&self, file: &str) -> Result<(), LogicalError> {
        let path = self.path(file);
        match fs::remove_file(&path) {
            Ok(()) => self.sync(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LogicalError::Io { op: "remove", path, source: e }),
        }
    }

    fn sync(&self) -> Result<(), LogicalError> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(LogicalError::io("fsync", &self.dir))
    }

    /// Reads `file`: `None` when it does not exist; an error naming the file when it is
    /// damaged.
    pub(crate) fn load<T: DeserializeOwned>(&self, file: &str) -> Result<Option<T>, LogicalError> {
        let path = self.path(file);
        let bad = |message: String| LogicalError::State { path: path.clone(), message };
        match fs::metadata(&path) {
            Ok(meta) if meta.len() > MAX_FILE => {
                return Err(bad(format!("{} bytes, more than a state file holds", meta.len())));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogicalError::Io { op: "stat", path, source: e }),
        }
        let bytes = fs::read(&path).map_err(LogicalError::io("read", &path))?;
        decode(&bytes).map(Some).map_err(bad)
    }

    /// The names of files ending in `suffix`, sorted.
    pub(crate) fn list(&self, suffix: &str) -> Result<Vec<String>, LogicalError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(LogicalError::io("list", &self.dir))? {
            let entry = entry.map_err(LogicalError::io("list", &self.dir))?;
            if let Some(name) = entry.file_name().to_str()
                && let Some(stem) = name.strip_suffix(suffix)
            {
                out.push(stem.to_string());
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Decodes a state file's bytes (the layout in the module documentation); the error says
/// what is wrong.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let newline = bytes.iter().position(|&b| b == b'\n').ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "the header is not text")?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, version, crc, len] = fields.as_slice() else {
        return Err(format!("header {header:?} is not `{MAGIC} <version> <crc> <len>`"));
    };
    if *magic != MAGIC {
        return Err(format!("header {header:?} does not start with {MAGIC:?}"));
    }
    if *version != VERSION.to_string() {
        return Err(format!("format version {version} (this build reads {VERSION})"));
    }
    let crc = u32::from_str_radix(crc, 16).map_err(|_| format!("checksum {crc:?} is not hex"))?;
    let len: usize = len.parse().map_err(|_| format!("length {len:?} is not a number"))?;
    let body = &bytes[newline + 1..];
    if body.len() < len {
        return Err(format!("truncated: {} of {len} bytes", body.len()));
    }
    let json = &body[..len];
    let actual = crc32c::crc32c(json);
    if actual != crc {
        return Err(format!("checksum mismatch: header says {crc:08x}, content is {actual:08x}"));
    }
    serde_json::from_slice(json).map_err(|e| format!("content: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_damage_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        dir.save("a.slot", &serde_json::json!({"lsn": 7})).unwrap();
        assert_eq!(dir.load::<serde_json::Value>("a.slot").unwrap().unwrap()["lsn"], 7);
        assert!(dir.load::<serde_json::Value>("b.slot").unwrap().is_none());
        assert_eq!(dir.list(".slot").unwrap(), ["a"]);
        let path = dir.path("a.slot");
        let good = fs::read(&path).unwrap();
        let flip = |at: usize| {
            let mut bytes = good.clone();
            bytes[at] ^= 0x20;
            bytes
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (flip(good.len() - 4), "checksum mismatch"),
            (good[..good.len() - 5].to_vec(), "truncated"),
            (flip(0), "does not start"),
            (b"no newline".to_vec(), "no header"),
            (b"themis-slot 9 0 0\n".to_vec(), "format version 9"),
        ];
        for (bytes, fragment) in cases {
            fs::write(&path, bytes).unwrap();
            let err = dir.load::<serde_json::Value>("a.slot").unwrap_err().to_string();
            assert!(err.contains(fragment) && err.contains("a.slot"), "{err}");
        }
        fs::write(dir.path("c.slot.tmp"), b"half").unwrap();
        StateDir::open(tmp.path()).unwrap();
        assert!(!dir.path("c.slot.tmp").exists(), "a crash's temporary file is removed");
        dir.remove("a.slot").unwrap();
        dir.remove("a.slot").unwrap();
    }
}

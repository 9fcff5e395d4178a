//! Atomic file writes: temp file in the same directory → final mode and owner → fsync → rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Mode and owner for what kvfetch writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    pub mode: u32,
    pub owner: Option<(u32, Option<u32>)>,
}

/// A temp file written and synced, waiting to be renamed over `target`.
#[derive(Debug)]
pub struct Staged {
    temp: PathBuf,
    pub target: PathBuf,
}

impl Staged {
    /// Rename into place.
    pub fn commit(self) -> Result<(), Error> {
        let result = fs::rename(&self.temp, &self.target);
        if let Err(e) = result {
            let _ = fs::remove_file(&self.temp);
            return Err(Error::Output(format!(
                "cannot rename into {}: {e}",
                self.target.display()
            )));
        }
        if let Some(dir) = self.target.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    /// Throw the temp file away.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.temp);
    }
}

/// Write `bytes` to a temp file beside `target`.
pub fn stage(target: &Path, bytes: &[u8], opts: FileOptions) -> Result<Staged, Error> {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{base}.kvfetch-{}-{:08x}.tmp",
        std::process::id(),
        (crate::retry::random_unit() * u32::MAX as f64) as u32
    ));
    let fail = |e: io::Error| Error::Output(format!("cannot write {}: {e}", target.display()));
    let result = write_temp(&temp, bytes, opts);
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(fail(e));
    }
    Ok(Staged {
        temp,
        target: target.to_path_buf(),
    })
}

fn write_temp(temp: &Path, bytes: &[u8], opts: FileOptions) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(opts.mode)
        .open(temp)?;
    // The umask may have narrowed the mode; set it exactly before any byte is written.
    file.set_permissions(fs::Permissions::from_mode(opts.mode))?;
    if let Some((uid, gid)) = opts.owner {
        std::os::unix::fs::fchown(&file, Some(uid), gid)?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

/// Stage all `(target, bytes)` pairs, then rename them all; on any failure nothing is renamed
/// and no temp file is left.
pub fn write_all(items: &[(PathBuf, Vec<u8>)], opts: FileOptions) -> Result<(), Error> {
    let mut staged = Vec::with_capacity(items.len());
    for (target, bytes) in items {
        match stage(target, bytes, opts) {
            Ok(s) => staged.push(s),
            Err(e) => {
                staged.into_iter().for_each(Staged::discard);
                return Err(e);
            }
        }
    }
    let mut first_error = None;
    for s in staged {
        if first_error.is_some() {
            s.discard();
        } else if let Err(e) = s.commit() {
            first_error = Some(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Create `dir` (mode 0700, owned like the files) if missing.
pub fn ensure_dir(dir: &Path, opts: FileOptions) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    let fail =
        |e: io::Error| Error::Output(format!("cannot create directory {}: {e}", dir.display()));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(fail)?;
    if let Some((uid, gid)) = opts.owner {
        std::os::unix::fs::chown(dir, Some(uid), gid).map_err(fail)?;
    }
    Ok(())
}

/// Whether `dir` lives on tmpfs or ramfs (memory, never disk).
pub fn on_memory_fs(dir: &Path) -> Option<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a properly sized out-parameter.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    // f_type's width differs by target
    let kind = st.f_type as i64;
    Some(kind == TMPFS_MAGIC || kind == RAMFS_MAGIC)
}

//! Atomic, all-or-nothing file writes.
//!
//! Each output is staged as a temp file in the target's own directory (created exclusively, so
//! never through a symlink, with its final mode and owner, then fsynced). Only when every output
//! is staged are they moved into place, each with `renameat2(RENAME_EXCHANGE)` where the target
//! exists: the old file then sits under the temp name, so if a later move fails (a bind-mounted
//! target answers EBUSY) every earlier one is swapped back and the outputs are exactly as before.
//! Where the file system cannot exchange, a hard link keeps the old file for the roll-back.
//!
//! Temp files are named `.kvfetch-tmp-PID-RANDOM`; a run sweeps the ones a killed run left behind.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::error::Error;

/// How every temp file kvfetch writes is named at the start.
pub const TEMP_PREFIX: &str = ".kvfetch-tmp-";

/// A temp file older than this is stale whoever wrote it: a live write takes milliseconds.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// A temp file of a process that no longer exists is stale once this old (the grace covers a
/// writer in another PID namespace, whose PID means nothing here).
const ORPHAN_AFTER: Duration = Duration::from_secs(2);

/// Mode and owner for what kvfetch writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    pub mode: u32,
    pub owner: Option<(u32, Option<u32>)>,
}

/// A temp file written and synced, waiting to be moved over `target`.
#[derive(Debug)]
pub struct Staged {
    temp: PathBuf,
    pub target: PathBuf,
}

/// What one move did, so it can be undone.
enum Moved {
    /// Target and temp were exchanged: the old file is now at `temp`.
    Exchanged { temp: PathBuf, target: PathBuf },
    /// The target was replaced; the old file is kept at `backup` (a hard link), if it existed.
    Replaced {
        backup: Option<PathBuf>,
        target: PathBuf,
    },
}

impl Staged {
    /// Throw the temp file away.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.temp);
    }

    /// Move into place, keeping what is needed to undo it.
    fn commit(self) -> Result<Moved, Error> {
        let fail = |e: io::Error| {
            let _ = fs::remove_file(&self.temp);
            Error::Output(format!(
                "cannot move the new file into {}: {e}",
                self.target.display()
            ))
        };
        if fs::symlink_metadata(&self.target).is_ok() {
            match exchange(&self.temp, &self.target) {
                Ok(()) => {
                    return Ok(Moved::Exchanged {
                        temp: self.temp,
                        target: self.target,
                    });
                }
                Err(e) if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                    return Err(fail(e));
                }
                Err(_) => {} // the file system cannot exchange: keep a hard link instead
            }
        }
        let backup = match fs::symlink_metadata(&self.target) {
            Ok(_) => Some(self.keep_old().map_err(fail)?),
            Err(_) => None,
        };
        if let Err(e) = fs::rename(&self.temp, &self.target) {
            if let Some(b) = &backup {
                if fs::symlink_metadata(&self.target).is_err() {
                    let _ = fs::rename(b, &self.target); // it was moved aside: put it back
                } else {
                    let _ = fs::remove_file(b);
                }
            }
            return Err(fail(e));
        }
        Ok(Moved::Replaced {
            backup,
            target: self.target,
        })
    }
}

impl Staged {
    /// Keep the existing target for a roll-back: a hard link beside it, or, where the file
    /// system has none, the target itself moved aside (it is missing until the new file lands).
    fn keep_old(&self) -> io::Result<PathBuf> {
        let backup = temp_path(dir_of(&self.target));
        if fs::hard_link(&self.target, &backup).is_ok() {
            return Ok(backup);
        }
        fs::rename(&self.target, &backup)?;
        Ok(backup)
    }
}

impl Moved {
    /// Put the old file back (or remove a file that did not exist before); false if that
    /// failed.
    fn undo(self) -> bool {
        match self {
            Moved::Exchanged { temp, target } => {
                let back = exchange(&temp, &target).is_ok();
                if back {
                    let _ = fs::remove_file(&temp);
                }
                back
            }
            Moved::Replaced {
                backup: Some(b),
                target,
            } => fs::rename(&b, &target).is_ok(),
            Moved::Replaced {
                backup: None,
                target,
            } => fs::remove_file(&target).is_ok(),
        }
    }

    /// Drop the old file for good and sync the directory.
    fn finish(self) {
        let (old, target) = match self {
            Moved::Exchanged { temp, target } => (Some(temp), target),
            Moved::Replaced { backup, target } => (backup, target),
        };
        if let Some(old) = old {
            let _ = fs::remove_file(old);
        }
        let _ = File::open(dir_of(&target)).and_then(|d| d.sync_all());
    }
}

/// `renameat2(a, b, RENAME_EXCHANGE)`: swap two names atomically.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths relative to the working directory.
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
        Err(io::Error::last_os_error())
    }
}

fn dir_of(target: &Path) -> &Path {
    target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!(
        "{TEMP_PREFIX}{}-{:08x}",
        std::process::id(),
        (crate::base::retry::random_unit() * u32::MAX as f64) as u32
    ))
}

/// Write `bytes` to a temp file beside `target`.
pub fn stage(target: &Path, bytes: &[u8], opts: FileOptions) -> Result<Staged, Error> {
    let temp = temp_path(dir_of(target));
    if let Err(e) = write_temp(&temp, bytes, opts) {
        let _ = fs::remove_file(&temp);
        let msg = format!("cannot write {}: {e}", target.display());
        return Err(Error::from_io(&e, Error::Output, msg));
    }
    Ok(Staged {
        temp,
        target: target.to_path_buf(),
    })
}

/// Create `temp` (never through a symlink) with its final mode and owner, write and sync it.
pub(crate) fn write_temp(temp: &Path, bytes: &[u8], opts: FileOptions) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
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

/// Write every `(target, bytes)` pair, or none: check every target, stage all, then move them
/// into place; if a move fails, undo the earlier ones. No temp file is left either way.
pub fn write_all(items: &[(PathBuf, Vec<u8>, FileOptions)]) -> Result<(), Error> {
    write_all_then(items, || Ok(()))
}

/// [`write_all`], then `last` (an atomic `--dir`'s flip) in the same unit: if `last` fails,
/// every file moved is put back as it was.
pub fn write_all_then(
    items: &[(PathBuf, Vec<u8>, FileOptions)],
    last: impl FnOnce() -> Result<(), Error>,
) -> Result<(), Error> {
    // A signal arriving now waits for the commit (or roll-back) to finish.
    let _writing = crate::base::signals::writing();
    for (target, _, _) in items {
        check_target(target)?;
    }
    let mut staged = Vec::with_capacity(items.len());
    for (target, bytes, opts) in items {
        match stage(target, bytes, *opts) {
            Ok(s) => staged.push(s),
            Err(e) => {
                staged.into_iter().for_each(Staged::discard);
                return Err(e);
            }
        }
    }
    let mut moved = Vec::with_capacity(staged.len());
    let mut rest = staged.into_iter();
    for s in rest.by_ref() {
        match s.commit() {
            Ok(m) => moved.push(m),
            Err(e) => {
                rest.for_each(Staged::discard);
                // Every move is undone, even after one that fails.
                let results: Vec<bool> = moved.into_iter().rev().map(Moved::undo).collect();
                let undone = !results.contains(&false);
                let state = if undone {
                    "every output was put back as it was"
                } else {
                    "some earlier outputs could not be put back and hold the new values: check the output directory"
                };
                return Err(Error::Output(format!("{e}; {state}")));
            }
        }
    }
    if let Err(e) = last() {
        let results: Vec<bool> = moved.into_iter().rev().map(Moved::undo).collect();
        if results.contains(&false) {
            return Err(Error::Output(format!(
                "{e}; some other outputs could not be put back and hold the new values: check them"
            )));
        }
        return Err(e);
    }
    moved.into_iter().for_each(Moved::finish);
    Ok(())
}

/// A target may be missing, a file or a symlink (which is replaced, never followed); anything
/// else (a directory, a device) is refused before the first file is touched.
pub fn check_target(target: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_file() || m.file_type().is_symlink() => Ok(()),
        Ok(_) => Err(Error::Output(format!(
            "{} exists and is not a regular file (a directory?); kvfetch only replaces files: remove it or choose another name",
            target.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Output(format!(
            "cannot inspect {}: {e}",
            target.display()
        ))),
    }
}

/// Check, before any request, that files can be created in `dir`, or with `create` in the
/// directory that will be created there (its nearest existing ancestor is a writable directory).
pub fn check_writable_dir(dir: &Path, what: &str, create: bool) -> Result<(), Error> {
    let existing = dir
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && fs::symlink_metadata(p).is_ok())
        .unwrap_or(Path::new("."));
    let fail = |why: String| Error::Output(format!("{what} {}: {why}", dir.display()));
    if !create && existing != dir && !dir.as_os_str().is_empty() {
        return Err(fail(
            "the directory does not exist; kvfetch creates only --dir".into(),
        ));
    }
    match fs::metadata(existing) {
        Ok(m) if m.is_dir() => {}
        Ok(_) if existing == dir && what == "--dir" => {
            return Err(fail(
                "is a file, not a directory: give a directory (kvfetch creates it if missing), or --env-file for one file of all secrets".into(),
            ));
        }
        Ok(_) if existing == dir => return Err(fail("is a file, not a directory".into())),
        Ok(_) => {
            return Err(fail(format!("{} is not a directory", existing.display())));
        }
        Err(e) => return Err(fail(e.to_string())),
    }
    let Ok(c) = CString::new(existing.as_os_str().as_bytes()) else {
        return Err(fail("the path holds a NUL byte".into()));
    };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let e = io::Error::last_os_error();
        return Err(fail(format!(
            "cannot create files in {}: {e}",
            existing.display()
        )));
    }
    Ok(())
}

/// Remove temp files that a killed kvfetch left in `dir`: ours by name, and either written by a
/// process that no longer exists or older than any live write could be.
pub fn sweep_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
        let gone = pid.is_some_and(|p| p != std::process::id() as i32 && !alive(p));
        // The status-change time, not the modification time: an old file kept for a roll-back
        // keeps its old mtime, but its rename or link just changed its ctime.
        let changed = UNIX_EPOCH + Duration::new(meta.ctime().max(0) as u64, 0);
        let age = changed.elapsed().unwrap_or_default();
        let stale = age > STALE_AFTER || (gone && age > ORPHAN_AFTER);
        if stale && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH))
}

/// Create `dir` (mode 0700, owned like the files) if missing. A directory that already exists
/// must belong to root, this user or `--owner` (someone else may have created it since the
/// checks).
pub fn ensure_dir(dir: &Path, opts: FileOptions) -> Result<(), Error> {
    if let Ok(m) = fs::metadata(dir)
        && m.is_dir()
    {
        let uid = m.uid();
        let ours = uid == 0 || uid == euid() || opts.owner.is_some_and(|(o, _)| o == uid);
        if !ours {
            return Err(Error::Output(format!(
                "--dir {} belongs to uid {uid}, not to root, this user or --owner; kvfetch will not write secrets into it",
                dir.display()
            )));
        }
        return Ok(());
    }
    // Every directory created gets the mode and owner (a group that reads the files must be
    // able to pass through all of them), set through a handle opened without following a
    // symlink, so a directory swapped for a link in a shared parent changes nothing else.
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && fs::symlink_metadata(p).is_err())
        .collect();
    let mut made: Vec<&Path> = Vec::new();
    for d in missing.iter().rev() {
        if let Err(e) = make_dir(d, opts) {
            for m in made.iter().rev() {
                let _ = fs::remove_dir(m);
            }
            let msg = format!("cannot create directory {}: {e}", d.display());
            return Err(Error::from_io(&e, Error::Output, msg));
        }
        made.push(d);
    }
    Ok(())
}

/// Create one directory with [`dir_mode`] and `--owner`.
fn make_dir(d: &Path, opts: FileOptions) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(d)?;
    let handle = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(d)?;
    handle.set_permissions(fs::Permissions::from_mode(dir_mode(opts.mode)))?;
    if let Some((uid, gid)) = opts.owner {
        std::os::unix::fs::fchown(&handle, Some(uid), gid)?;
    }
    Ok(())
}

/// The mode of a `--dir` kvfetch creates: rwx for its owner, and r-x for group or others
/// exactly where `--file-mode` lets them read the files (0400 → 0700, 0440 → 0750,
/// 0444 → 0755): a group that may read the files can also reach them. Never writable by them.
pub fn dir_mode(file_mode: u32) -> u32 {
    let mut mode = 0o700;
    if file_mode & 0o040 != 0 {
        mode |= 0o050;
    }
    if file_mode & 0o004 != 0 {
        mode |= 0o005;
    }
    mode
}

/// Whether two paths name the same file: equal after resolving their (existing) parent
/// directories, and with the same final name.
pub fn same_path(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| {
        let parent = fs::canonicalize(dir_of(p)).unwrap_or_else(|_| dir_of(p).to_path_buf());
        (parent, p.file_name().map(|n| n.to_os_string()))
    };
    a == b || resolve(a) == resolve(b)
}

/// The capability bit that allows `chown` to anyone (linux/capability.h).
const CAP_CHOWN: u32 = 0;

/// Remove the output at `path` (a file, or a symlink someone put there, never what it points
/// to); `Ok(false)` when nothing is there. A directory is left alone and is an error.
pub fn remove_file(path: &Path) -> Result<bool, Error> {
    let fail = |e: io::Error| {
        let msg = format!("cannot remove {}: {e}", path.display());
        Error::from_io(&e, Error::Output, msg)
    };
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(fail(e)),
        Ok(m) if m.is_dir() => Err(Error::Output(format!(
            "{} is a directory where the file of an absent optional secret was; remove it",
            path.display()
        ))),
        Ok(_) => fs::remove_file(path).map(|()| true).map_err(fail),
    }
}

/// Whether the file at `path` is not exactly `bytes` with the mode (and owner) of `opts`: missing,
/// not a regular file, another mode or owner, or other bytes. The file is opened without
/// following a symlink and without blocking (a FIFO swapped in cannot hang the caller), judged
/// by `fstat` of what was opened, and read no further than one byte past the expected length.
pub fn differs(path: &Path, bytes: &[u8], opts: FileOptions) -> bool {
    use std::io::Read;
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return true;
    };
    let Ok(meta) = file.metadata() else {
        return true;
    };
    let owner_differs = opts
        .owner
        .is_some_and(|(uid, gid)| meta.uid() != uid || gid.is_some_and(|g| meta.gid() != g));
    if !meta.is_file() || meta.mode() & 0o7777 != opts.mode || owner_differs {
        return true;
    }
    if meta.len() != bytes.len() as u64 {
        return true;
    }
    let mut on_disk = Vec::with_capacity(bytes.len() + 1);
    let read = file.take(bytes.len() as u64 + 1).read_to_end(&mut on_disk);
    read.is_err() || on_disk != bytes
}

/// The effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether this process may give files to `uid`/`gid`: with CAP_CHOWN to anyone; without it
/// (root included) only to itself, and to a group it is a member of (chown(2)).
pub fn can_chown(uid: u32, gid: Option<u32>) -> bool {
    // Root without CAP_CHOWN (a container with `drop: [ALL]`) is no different from anyone.
    if uid == euid() && gid.is_none_or(member_of) {
        return true;
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_CHOWN) != 0)
}

/// Whether this process is in group `gid` (its effective group or a supplementary one).
fn member_of(gid: u32) -> bool {
    // SAFETY: getegid cannot fail; getgroups writes at most `groups.len()` entries.
    unsafe {
        if libc::getegid() == gid {
            return true;
        }
        let count = libc::getgroups(0, std::ptr::null_mut());
        let mut groups = vec![0 as libc::gid_t; count.max(0) as usize];
        let n = libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr());
        n > 0 && groups[..n as usize].contains(&gid)
    }
}

/// Why a directory that secrets go into is not private, if it is not: it is a symlink (it can
/// be pointed elsewhere); it or any directory above it belongs to someone other than root, this
/// user or `owner` (they can rename it away and put their own in its place); it is writable by
/// group or others (they can swap files in it); or a directory above it is writable by group or
/// others without the sticky bit. A `dir` that does not exist yet is judged by its nearest
/// existing ancestor.
pub fn exposure(dir: &Path, owner: Option<u32>) -> Option<String> {
    let meta = fs::symlink_metadata(dir).ok();
    if meta.as_ref().is_some_and(|m| m.file_type().is_symlink()) {
        return Some(format!("{} is a symlink", dir.display()));
    }
    let existing = dir.ancestors().find(|p| p.exists())?;
    let real = fs::canonicalize(existing).ok()?;
    let trusted = |uid: u32| uid == 0 || uid == euid() || Some(uid) == owner;
    for (i, p) in real.ancestors().enumerate() {
        let m = fs::metadata(p).ok()?;
        let mode = m.mode() & 0o7777;
        let own = i == 0 && existing == dir;
        if !trusted(m.uid()) {
            return Some(format!(
                "{} belongs to uid {}, not to root or this user",
                p.display(),
                m.uid()
            ));
        }
        let sticky = mode & 0o1000 != 0;
        if mode & 0o022 != 0 && (own || !sticky) {
            return Some(format!(
                "{} is writable by group or others (mode {mode:04o})",
                p.display()
            ));
        }
    }
    None
}

/// Whether `dir` lives on tmpfs or ramfs (memory, never disk).
pub fn on_memory_fs(dir: &Path) -> Option<bool> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory of this test's own, removed at the end.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("kvfetch-files-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn msg(r: Result<(), Error>) -> String {
        r.unwrap_err().to_string()
    }

    fn root() -> bool {
        euid() == 0
    }

    /// As `tests/common`'s `skip`: a line on the real stderr and in `KVFETCH_SKIP_LOG`, so the
    /// test counts as skipped, not passed.
    fn skip(why: &str) {
        use std::io::Write;
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!("SKIPPED: {test}: {why}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(log) = std::env::var_os("KVFETCH_SKIP_LOG") {
            let f = fs::OpenOptions::new().create(true).append(true).open(log);
            if let Ok(mut f) = f {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    #[test]
    fn dir_mode_opens_exactly_what_the_file_mode_lets_read() {
        assert_eq!(dir_mode(0o400), 0o700);
        assert_eq!(dir_mode(0o440), 0o750);
        assert_eq!(dir_mode(0o404), 0o705);
        assert_eq!(dir_mode(0o444), 0o755);
        assert_eq!(dir_mode(0o600), 0o700);
    }

    #[test]
    fn a_target_that_cannot_be_inspected_is_refused() {
        let d = Dir::new("target");
        let file = d.0.join("f");
        fs::write(&file, "x").unwrap();
        assert!(check_target(&d.0.join("missing")).is_ok());
        assert!(check_target(&file).is_ok());
        // Below a file: ENOTDIR, not "missing".
        let m = msg(check_target(&file.join("x")));
        assert!(m.starts_with("cannot inspect "), "{m}");
        let m = msg(check_target(&d.0));
        assert!(m.contains("is not a regular file"), "{m}");
    }

    #[test]
    fn a_file_where_a_directory_belongs_is_named_for_what_it_is() {
        let d = Dir::new("writable");
        let file = d.0.join("f");
        fs::write(&file, "x").unwrap();
        assert!(check_writable_dir(&d.0, "--dir", false).is_ok());
        assert!(check_writable_dir(&d.0.join("new"), "--dir", true).is_ok());
        let m = msg(check_writable_dir(&file, "--dir", true));
        assert!(
            m.ends_with("is a file, not a directory: give a directory (kvfetch creates it if missing), or --env-file for one file of all secrets"),
            "{m}"
        );
        let m = msg(check_writable_dir(
            &file,
            "the directory of --env-file",
            false,
        ));
        assert_eq!(
            m,
            format!(
                "the directory of --env-file {}: is a file, not a directory",
                file.display()
            )
        );
        let below = file.join("sub");
        let m = msg(check_writable_dir(&below, "--dir", true));
        assert_eq!(
            m,
            format!(
                "--dir {}: {} is not a directory",
                below.display(),
                file.display()
            )
        );
        let m = msg(check_writable_dir(
            &d.0.join("no/such"),
            "the directory of --ready-file",
            false,
        ));
        assert!(
            m.ends_with("the directory does not exist; kvfetch creates only --dir"),
            "{m}"
        );
    }

    #[test]
    fn same_path_sees_through_the_parent_directory() {
        let d = Dir::new("same");
        fs::create_dir(d.0.join("sub")).unwrap();
        let a = d.0.join("sub/x");
        assert!(same_path(&a, &a));
        assert!(same_path(&a, &d.0.join("sub/../sub/./x")));
        assert!(!same_path(&a, &d.0.join("sub/y")));
        assert!(!same_path(&a, &d.0.join("x")));
    }

    const MODE: FileOptions = FileOptions {
        mode: 0o400,
        owner: None,
    };

    #[test]
    fn differs_judges_what_it_opened_and_each_property_alone() {
        let d = Dir::new("differs");
        let file = d.0.join("f");
        fs::write(&file, "same").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(!differs(&file, b"same", MODE));
        assert!(differs(&file, b"other", MODE), "other bytes");
        assert!(differs(&file, b"samf", MODE), "same length, other bytes");
        assert!(
            differs(
                &file,
                b"same",
                FileOptions {
                    mode: 0o440,
                    owner: None
                }
            ),
            "mode"
        );
        assert!(differs(&d.0.join("missing"), b"same", MODE));
        // A symlink to the very bytes is not kvfetch's file: it is never followed.
        let link = d.0.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(differs(&link, b"same", MODE), "a symlink");
        // A directory is not a file, whatever its mode.
        let sub = d.0.join("sub");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(differs(&sub, b"", MODE), "a directory");
    }

    #[test]
    fn differs_compares_uid_and_gid_each() {
        if !root() {
            skip("chown needs root (CI runs as root)");
            return;
        }
        let d = Dir::new("owner");
        let file = d.0.join("f");
        fs::write(&file, "v").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o400)).unwrap();
        std::os::unix::fs::chown(&file, Some(1000), Some(2000)).unwrap();
        let owned = |uid, gid| FileOptions {
            mode: 0o400,
            owner: Some((uid, gid)),
        };
        assert!(!differs(&file, b"v", owned(1000, Some(2000))));
        assert!(!differs(&file, b"v", owned(1000, None)), "no gid asked");
        assert!(differs(&file, b"v", owned(1000, Some(1000))), "gid");
        assert!(differs(&file, b"v", owned(2000, Some(2000))), "uid");
    }

    #[test]
    fn an_existing_dir_must_belong_to_root_this_user_or_the_owner() {
        if !root() {
            skip("chown needs root (CI runs as root)");
            return;
        }
        let d = Dir::new("ensure");
        let owned = |uid| FileOptions {
            mode: 0o400,
            owner: Some((uid, None)),
        };
        std::os::unix::fs::chown(&d.0, Some(4321), Some(4321)).unwrap();
        assert!(ensure_dir(&d.0, owned(4321)).is_ok(), "--owner's");
        let m = msg(ensure_dir(&d.0, owned(1234)));
        assert!(m.contains("belongs to uid 4321"), "{m}");
        std::os::unix::fs::chown(&d.0, Some(0), Some(0)).unwrap();
        assert!(ensure_dir(&d.0, owned(1234)).is_ok(), "root's");
    }

    #[test]
    fn exposure_names_each_way_a_directory_is_not_private() {
        let d = Dir::new("exposure");
        let dir = d.0.join("secrets");
        fs::create_dir(&dir).unwrap();
        let set =
            |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        set(&d.0, 0o755);
        set(&dir, 0o700);
        assert_eq!(exposure(&dir, None), None);
        set(&dir, 0o770);
        assert_eq!(
            exposure(&dir, None),
            Some(format!(
                "{} is writable by group or others (mode 0770)",
                dir.display()
            ))
        );
        // The sticky bit protects what is below a shared directory, not the directory itself.
        set(&dir, 0o1777);
        assert!(exposure(&dir, None).is_some_and(|m| m.contains("(mode 1777)")));
        assert_eq!(
            exposure(&dir.join("new"), None),
            None,
            "judged as the parent of a new dir"
        );
        set(&dir, 0o777);
        assert!(exposure(&dir.join("new"), None).is_some_and(|m| m.contains("(mode 0777)")));
        set(&dir, 0o700);
        let link = d.0.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert_eq!(
            exposure(&link, None),
            Some(format!("{} is a symlink", link.display()))
        );
        if root() {
            std::os::unix::fs::chown(&dir, Some(4321), None).unwrap();
            assert_eq!(
                exposure(&dir, None),
                Some(format!(
                    "{} belongs to uid 4321, not to root or this user",
                    dir.display()
                ))
            );
            assert_eq!(exposure(&dir, Some(4321)), None, "--owner's");
        }
    }

    #[test]
    fn alive_is_true_only_for_a_process_that_exists() {
        assert!(alive(std::process::id() as i32));
        assert!(alive(1));
        // 0 and negative numbers name process groups, never one writer.
        assert!(!alive(0));
        assert!(!alive(-1));
        assert!(!alive(i32::MAX));
    }
}

//! The ground outputs stand on, judged before any request and kept tidy: targets and
//! directories (writable, private, on memory), who may own what (`--owner`), the sweep of temp
//! files a killed run left, and removal.

use super::*;
use crate::error::Error;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

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

pub(super) fn alive(pid: i32) -> bool {
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
pub(super) fn make_dir(d: &Path, opts: FileOptions) -> io::Result<()> {
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
pub(super) const CAP_CHOWN: u32 = 0;

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
pub(super) fn member_of(gid: u32) -> bool {
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

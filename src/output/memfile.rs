//! Where `exec` puts a `?file` secret: a file that lives in memory only, private to the app.
//!
//! - [`sealed`]: for plain `exec`, a memfd (`memfd_create`) holding the value, mode 0400 and
//!   sealed against any write, grow, shrink or further sealing. It is on no file system: it
//!   lives as long as a process holds its descriptor, and the app reaches it as
//!   `/proc/self/fd/N`.
//! - [`PrivateDir`]: for supervised `exec`, a directory of kvfetch's own (mode 0700, on tmpfs or
//!   ramfs only) holding one file per variable, each replaced atomically on rotation; it is
//!   removed when kvfetch exits. kvfetch holds an `flock` on it while it lives, so a directory
//!   left by a kvfetch that was killed (SIGKILL, the OOM killer) is known by its free lock and
//!   removed by the next supervised `exec` of the same user on that tmpfs (a restarted
//!   container of the same pod shares `/dev/shm`), whatever PID namespace either runs in.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::output::files;

/// The mode of every file a `?file` variable names.
pub const MODE: u32 = 0o400;

/// `MFD_NOEXEC_SEAL` (Linux 6.3): the memfd can never be made executable.
const MFD_NOEXEC_SEAL: libc::c_uint = 0x0008;

/// A memfd named `kvfetch:NAME` holding `bytes`: mode 0400, sealed (no write, grow, shrink or
/// new seal), close-on-exec until the caller hands it on.
pub fn sealed(name: &str, bytes: &[u8]) -> Result<OwnedFd, Error> {
    let fail = |what: &str, e: io::Error| {
        let msg = format!("cannot create the in-memory file for {name} ({what}): {e}");
        Error::from_io(&e, Error::Output, msg)
    };
    let label = CString::new(format!("kvfetch:{name}"))
        .map_err(|_| Error::Usage(format!("the variable name {name:?} holds a NUL byte")))?;
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a valid C string and flags.
    let mut raw = unsafe { libc::memfd_create(label.as_ptr(), flags | MFD_NOEXEC_SEAL) };
    if raw < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // A kernel before 6.3 knows no MFD_NOEXEC_SEAL; the mode below leaves no exec bit.
        // SAFETY: as above.
        raw = unsafe { libc::memfd_create(label.as_ptr(), flags) };
    }
    if raw < 0 {
        return Err(fail("memfd_create", io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a descriptor just created and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = std::fs::File::from(fd);
    io::Write::write_all(&mut file, bytes).map_err(|e| fail("write", e))?;
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(file.as_raw_fd(), MODE) } != 0 {
        return Err(fail("fchmod", io::Error::last_os_error()));
    }
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl F_ADD_SEALS on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(fail("seal", io::Error::last_os_error()));
    }
    Ok(OwnedFd::from(file))
}

/// Let `fd` pass through `execve` (clear its close-on-exec flag, and only its).
pub fn inherit(fd: &OwnedFd) -> Result<(), Error> {
    // SAFETY: fcntl F_SETFD on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        let e = io::Error::last_os_error();
        let msg = format!("cannot hand an in-memory file to the command: {e}");
        return Err(Error::from_io(&e, Error::Output, msg));
    }
    Ok(())
}

/// The path by which a process holding `fd` opens it.
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// How a private directory is named: `PREFIX<pid>-<8 hex digits>`.
const PREFIX: &str = "kvfetch-exec-";

/// The name a new private directory has until it is locked (never swept).
const NEW_PREFIX: &str = ".kvfetch-exec-new-";

/// A directory of kvfetch's own on tmpfs or ramfs, locked while it lives, removed (with what it
/// holds) on drop.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    /// The directory, opened and `flock`ed (close-on-exec: no child holds the lock); every file
    /// is written, replaced and removed relative to it (`openat`, `renameat`, `unlinkat`).
    dir: std::fs::File,
}

/// Whether `name` is a private directory's: [`PREFIX`], digits, `-`, 8 hex digits.
fn private_name(name: &str) -> bool {
    let Some((pid, random)) = name.strip_prefix(PREFIX).and_then(|r| r.split_once('-')) else {
        return false;
    };
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && random.len() == 8
        && random.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Open directory `path` (never through a symlink) and take its lock without waiting.
fn lock(path: &Path) -> io::Result<std::fs::File> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(dir)
}

/// Remove the private directories under `base` that a killed kvfetch of this user left: those
/// whose lock is free. Returns how many.
pub fn sweep(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        // A new directory is renamed within microseconds of its making: one still under its
        // first name a minute on was left by a kvfetch killed in between (and holds nothing).
        let unnamed = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(NEW_PREFIX))
            && std::fs::symlink_metadata(&path).is_ok_and(|m| {
                m.is_dir()
                    && m.uid() == files::euid()
                    && m.modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > std::time::Duration::from_secs(60))
            });
        if unnamed {
            removed += usize::from(std::fs::remove_dir(&path).is_ok());
            continue;
        }
        let ours = entry.file_name().to_str().is_some_and(private_name)
            && std::fs::symlink_metadata(&path)
                .is_ok_and(|m| m.is_dir() && m.uid() == files::euid() && m.mode() & 0o777 == 0o700);
        if !ours {
            continue;
        }
        // A live kvfetch holds the lock; a free one means its owner is gone.
        let Ok(_held) = lock(&path) else { continue };
        if std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
            crate::base::log::info(
                "removed the ?file directory a killed kvfetch left",
                &[("path", &path.display().to_string())],
            );
        }
    }
    removed
}

impl PrivateDir {
    /// Create `BASE/kvfetch-PID-RANDOM`, mode 0700, exclusively. `base` must be on tmpfs or
    /// ramfs: a value written there never reaches a disk.
    pub fn create(base: &Path) -> Result<PrivateDir, Error> {
        match files::on_memory_fs(base) {
            Some(true) => {}
            Some(false) => {
                return Err(Error::Output(format!(
                    "{} is not on tmpfs or ramfs, so ?file under supervised exec cannot keep its files in memory; mount a tmpfs there (Docker and Kubernetes do), or run exec without --refresh (a memfd)",
                    base.display()
                )));
            }
            None => {
                return Err(Error::Output(format!(
                    "{} is missing or unreadable; ?file under supervised exec keeps its files in a private directory on that tmpfs (or run exec without --refresh: a memfd)",
                    base.display()
                )));
            }
        }
        check_base(base)?;
        sweep(base);
        let mut last = None;
        for _ in 0..8 {
            match Self::try_create(base) {
                Ok(dir) => return Ok(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        let e = last.unwrap_or_else(|| io::Error::other("no free name"));
        let msg = format!(
            "cannot create a private directory under {} for ?file: {e}",
            base.display()
        );
        Err(Error::from_io(&e, Error::Output, msg))
    }

    /// Make the directory under a name no sweep looks at, lock it, then give it its name: a
    /// sweep never sees it unlocked.
    fn try_create(base: &Path) -> io::Result<PrivateDir> {
        let random = (crate::base::retry::random_unit() * u32::MAX as f64) as u32;
        let pid = std::process::id();
        let new = base.join(format!("{NEW_PREFIX}{pid}-{random:08x}"));
        let path = base.join(format!("{PREFIX}{pid}-{random:08x}"));
        std::fs::DirBuilder::new().mode(0o700).create(&new)?;
        let named = lock(&new).and_then(|held| {
            // The umask may have narrowed the mode; a sweep looks for exactly 0700. Set on the
            // directory opened and locked, never through its path (which could be swapped).
            if held.metadata()?.uid() != files::euid() {
                return Err(io::Error::other("the new directory is not this user's"));
            }
            // SAFETY: fchmod on a descriptor we own.
            if unsafe { libc::fchmod(held.as_raw_fd(), 0o700) } != 0 {
                return Err(io::Error::last_os_error());
            }
            rename_noreplace(&new, &path)?;
            Ok(held)
        });
        match named {
            Ok(held) => Ok(PrivateDir { path, dir: held }),
            Err(e) => {
                let _ = std::fs::remove_dir(&new);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file of variable `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Make the directory hold exactly these files: each present one written (atomically: a
    /// reader sees the old bytes or the new, never a mix), each absent one removed. Every file
    /// is reached through the locked directory's descriptor, never through its path: one
    /// renamed away and replaced gets no value written into the replacement.
    pub fn write(&self, items: &[(String, Option<Vec<u8>>)]) -> Result<(), Error> {
        let fail = |name: &str, what: &str, e: io::Error| {
            let msg = format!(
                "cannot {what} the ?file {} in {}: {e}",
                name,
                self.path.display()
            );
            Error::from_io(&e, Error::Output, msg)
        };
        let mut names = Vec::with_capacity(items.len());
        for (name, _) in items {
            names.push(entry_name(name)?);
        }
        // A signal arriving now waits for the renames to finish.
        let _writing = crate::base::signals::writing();
        // Only what differs is replaced: an unchanged file keeps its inode. All are staged
        // first; a failure leaves no temp file and the old files as they were.
        let mut staged: Vec<(&str, CString, CString)> = Vec::new();
        let discard = |staged: &[(&str, CString, CString)]| {
            for (_, temp, _) in staged {
                // SAFETY: unlinkat relative to our directory descriptor, valid C string.
                unsafe { libc::unlinkat(self.dir.as_raw_fd(), temp.as_ptr(), 0) };
            }
        };
        for ((name, bytes), c_name) in items.iter().zip(&names) {
            let Some(bytes) = bytes else { continue };
            if !self.differs(c_name, bytes) {
                continue;
            }
            let temp = entry_name(&format!(".{name}.kvfetch-new"))?;
            if let Err(e) = self.stage(&temp, bytes) {
                discard(&staged);
                return Err(fail(name, "write", e));
            }
            staged.push((name, temp, c_name.clone()));
        }
        for (i, (name, temp, target)) in staged.iter().enumerate() {
            let fd = self.dir.as_raw_fd();
            // SAFETY: renameat within our directory descriptor, valid C strings.
            if unsafe { libc::renameat(fd, temp.as_ptr(), fd, target.as_ptr()) } != 0 {
                let e = io::Error::last_os_error();
                discard(&staged[i..]);
                return Err(fail(name, "replace", e));
            }
        }
        for ((name, bytes), c_name) in items.iter().zip(&names) {
            if bytes.is_some() {
                continue;
            }
            // SAFETY: unlinkat relative to our directory descriptor, valid C string.
            if unsafe { libc::unlinkat(self.dir.as_raw_fd(), c_name.as_ptr(), 0) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENOENT) {
                    return Err(fail(name, "remove", e));
                }
            }
        }
        Ok(())
    }

    /// Open `name` in the directory: `flags` plus never through a symlink, never blocking,
    /// close-on-exec.
    fn open_at(&self, name: &CString, flags: libc::c_int) -> io::Result<std::fs::File> {
        let flags = flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: openat relative to our directory descriptor, valid C string.
        let raw = unsafe { libc::openat(self.dir.as_raw_fd(), name.as_ptr(), flags, MODE) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` was just opened and is owned by nobody else.
        Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// A new file `temp` holding `bytes`, mode [`MODE`].
    fn stage(&self, temp: &CString, bytes: &[u8]) -> io::Result<()> {
        // A temp file a failed write left behind is ours to replace.
        // SAFETY: unlinkat relative to our directory descriptor, valid C string.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), temp.as_ptr(), 0) };
        let mut file = self.open_at(temp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)?;
        // The umask may have narrowed the mode; set it exactly before any byte is written.
        // SAFETY: fchmod on a descriptor we own.
        if unsafe { libc::fchmod(file.as_raw_fd(), MODE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        io::Write::write_all(&mut file, bytes)
    }

    /// Whether the file `name` is not exactly `bytes`, a regular file of mode [`MODE`].
    fn differs(&self, name: &CString, bytes: &[u8]) -> bool {
        use std::io::Read;
        let Ok(file) = self.open_at(name, libc::O_RDONLY) else {
            return true;
        };
        let Ok(meta) = file.metadata() else {
            return true;
        };
        if !meta.is_file() || meta.mode() & 0o7777 != MODE || meta.len() != bytes.len() as u64 {
            return true;
        }
        let mut on_disk = Vec::with_capacity(bytes.len() + 1);
        let read = file.take(bytes.len() as u64 + 1).read_to_end(&mut on_disk);
        read.is_err() || on_disk != bytes
    }

    /// Remove every entry of the directory, through its descriptor.
    fn empty(&self) -> io::Result<()> {
        // SAFETY: dup of a descriptor we own; fdopendir takes the copy, closedir closes it;
        // readdir's entries are read before the next call.
        unsafe {
            let copy = libc::fcntl(self.dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0);
            if copy < 0 {
                return Err(io::Error::last_os_error());
            }
            let stream = libc::fdopendir(copy);
            if stream.is_null() {
                let e = io::Error::last_os_error();
                libc::close(copy);
                return Err(e);
            }
            let mut names = Vec::new();
            loop {
                let entry = libc::readdir(stream);
                if entry.is_null() {
                    break;
                }
                let name = std::ffi::CStr::from_ptr((*entry).d_name.as_ptr());
                if name.to_bytes() != b"." && name.to_bytes() != b".." {
                    names.push(name.to_owned());
                }
            }
            libc::closedir(stream);
            let mut result = Ok(());
            for name in names {
                if libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) != 0 {
                    result = Err(io::Error::last_os_error());
                }
            }
            result
        }
    }
}

/// `name` as a C string naming an entry of the directory itself: no `/`, NUL, `.` or `..`.
fn entry_name(name: &str) -> Result<CString, Error> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Error::Usage(format!(
            "{name:?} cannot name a file of ?file (a / or a dot name)"
        )));
    }
    CString::new(name)
        .map_err(|_| Error::Usage(format!("the variable name {name:?} holds a NUL byte")))
}

/// Whether `base` may hold the private directory: it must belong to root or this user, and
/// not be writable by group or others unless it has the sticky bit. Otherwise another user
/// could rename kvfetch's directory away (a rename in a writable parent needs no permission on
/// the directory itself) and put their own in its place, so that the app reads their values:
/// a Kubernetes `emptyDir` with `medium: Memory` mounted at `/dev/shm` is mode 0777 without the
/// sticky bit.
fn check_base(base: &Path) -> Result<(), Error> {
    let shown = base.display();
    let meta = std::fs::metadata(base).map_err(|e| {
        let msg =
            format!("cannot check {shown}, where ?file under supervised exec keeps its files: {e}");
        Error::from_io(&e, Error::Output, msg)
    })?;
    let mode = meta.mode() & 0o7777;
    if meta.uid() != 0 && meta.uid() != files::euid() {
        return Err(Error::Output(format!(
            "{shown} belongs to uid {}, not to root or this user: it could swap the private directory of ?file under supervised exec for its own; use a {shown} of root's or this user's (mode 1777 or not writable by others), or run exec without --refresh (a memfd)",
            meta.uid()
        )));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(Error::Output(format!(
            "{shown} is writable by group or others without the sticky bit (mode {mode:04o}): another user could swap the private directory of ?file under supervised exec for their own; mount {shown} with the sticky bit (chmod 1777, e.g. in an init container) or not writable by others, or run exec without --refresh (a memfd)"
        )));
    }
    Ok(())
}

/// Rename `from` to `to`, failing with `AlreadyExists` rather than replacing anything.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (a, b) = (c(from)?, c(to)?);
    // SAFETY: renameat2 with valid C strings, relative to the working directory (paths are
    // absolute).
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for PrivateDir {
    /// Empty the locked directory through its descriptor, then remove it by its path only if
    /// that path still names it (same device and inode).
    fn drop(&mut self) {
        let warn = |e: &dyn std::fmt::Display| {
            crate::base::log::warn(
                "cannot remove the private directory of ?file",
                &[
                    ("path", &self.path.display().to_string()),
                    ("error", &e.to_string()),
                ],
            );
        };
        if let Err(e) = self.empty() {
            warn(&e);
        }
        let ours = self.dir.metadata().ok();
        let there = std::fs::symlink_metadata(&self.path).ok();
        match (ours, there) {
            (Some(a), Some(b)) if a.dev() == b.dev() && a.ino() == b.ino() => {
                if let Err(e) = std::fs::remove_dir(&self.path) {
                    warn(&e);
                }
            }
            _ => warn(&"its path no longer names it (renamed away?); left in place"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_sealed_memfd_holds_the_value_read_only() {
        let fd = sealed("X_FILE", b"s3cret\0bytes").unwrap();
        let path = fd_path(&fd);
        let mut text = Vec::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text, b"s3cret\0bytes");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o400);
        // Sealed: even a writable descriptor (the original is one) cannot change it.
        let mut file = std::fs::File::from(fd);
        assert!(io::Write::write_all(&mut file, b"x").is_err());
        assert!(file.set_len(1).is_err());
        let link = std::fs::read_link(&path).unwrap();
        assert!(link.to_string_lossy().starts_with("/memfd:kvfetch:X_FILE"));
    }

    #[test]
    fn a_private_dir_is_0700_rewritten_in_place_and_removed_on_drop() {
        let base = Path::new("/dev/shm");
        if files::on_memory_fs(base) != Some(true) {
            return; // nothing to test on a machine without /dev/shm
        }
        let dir = PrivateDir::create(base).unwrap();
        let root = dir.path().to_path_buf();
        assert_eq!(
            std::fs::metadata(&root).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        dir.write(&[("A_FILE".into(), Some(b"one".to_vec()))])
            .unwrap();
        assert_eq!(std::fs::read(dir.file("A_FILE")).unwrap(), b"one");
        dir.write(&[("A_FILE".into(), Some(b"two".to_vec()))])
            .unwrap();
        assert_eq!(std::fs::read(dir.file("A_FILE")).unwrap(), b"two");
        let mode = std::fs::metadata(dir.file("A_FILE"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o400);
        dir.write(&[("A_FILE".into(), None)]).unwrap();
        assert!(!dir.file("A_FILE").exists());
        dir.write(&[("A_FILE".into(), Some(b"three".to_vec()))])
            .unwrap();
        // While it lives, a sweep leaves it alone.
        sweep(base);
        assert!(dir.file("A_FILE").exists());
        drop(dir);
        assert!(!root.exists());
        assert!(PrivateDir::create(Path::new("/proc")).is_err());
    }

    #[test]
    fn files_go_into_the_locked_directory_even_if_its_name_is_taken_over() {
        let base = Path::new("/dev/shm");
        if files::on_memory_fs(base) != Some(true) {
            return;
        }
        let dir = PrivateDir::create(base).unwrap();
        dir.write(&[("B_FILE".into(), Some(b"one".to_vec()))])
            .unwrap();
        // Someone renames the directory away and puts one of theirs in its place.
        let moved = base.join(format!("kvfetch-test-{}-moved", std::process::id()));
        std::fs::rename(dir.path(), &moved).unwrap();
        std::fs::create_dir(dir.path()).unwrap();
        dir.write(&[
            ("B_FILE".into(), Some(b"two".to_vec())),
            ("C_FILE".into(), Some(b"three".to_vec())),
        ])
        .unwrap();
        assert_eq!(std::fs::read(moved.join("B_FILE")).unwrap(), b"two");
        assert_eq!(std::fs::read(moved.join("C_FILE")).unwrap(), b"three");
        assert!(!dir.file("B_FILE").exists() && !dir.file("C_FILE").exists());
        dir.write(&[("B_FILE".into(), None)]).unwrap();
        assert!(!moved.join("B_FILE").exists());
        // A name that would leave the directory is refused.
        assert!(dir.write(&[("../X".into(), Some(b"x".to_vec()))]).is_err());
        let impostor = dir.path().to_path_buf();
        drop(dir);
        assert!(
            impostor.is_dir(),
            "the directory put in its place is not kvfetch's to remove"
        );
        let _ = std::fs::remove_dir_all(&impostor);
        let _ = std::fs::remove_dir_all(&moved);
    }

    #[test]
    fn a_base_others_may_write_without_the_sticky_bit_is_refused() {
        let base =
            std::env::temp_dir().join(format!("kvfetch-memfile-{}-base", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let set = |mode: u32| {
            std::fs::set_permissions(&base, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        for mode in [0o777, 0o775, 0o757] {
            set(mode);
            let e = check_base(&base).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::OUTPUT, "{mode:o}");
            let msg = e.to_string();
            assert!(
                msg.contains(&base.display().to_string()) && msg.contains("sticky"),
                "{mode:o}: {msg}"
            );
        }
        for mode in [0o1777, 0o755, 0o700] {
            set(mode);
            assert!(check_base(&base).is_ok(), "{mode:o}");
        }
        set(0o700);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_directory_a_killed_kvfetch_left_is_swept_and_only_that() {
        let base = Path::new("/dev/shm");
        if files::on_memory_fs(base) != Some(true) {
            return;
        }
        // Names of a process that cannot exist (PID u32::MAX), told apart by this process's id:
        // two test processes at once, or one a killed run left behind, never meet.
        let me = std::process::id();
        let stale = base.join(format!("{PREFIX}{}-{me:08x}", u32::MAX));
        let other = base.join(format!("kvfetch-test-{me}-x"));
        for d in [&stale, &other] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::DirBuilder::new().mode(0o700).create(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::fs::write(d.join("X_FILE"), "old value").unwrap();
        }
        let unnamed_old = base.join(format!("{NEW_PREFIX}{}-{me:08x}", u32::MAX));
        let unnamed_new = base.join(format!("{NEW_PREFIX}{}-{:08x}", u32::MAX, !me));
        for d in [&unnamed_old, &unnamed_new] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir(d).unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::open(&unnamed_old)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let live = PrivateDir::create(base).unwrap();
        assert!(!stale.exists(), "an unlocked private directory is removed");
        assert!(!unnamed_old.exists(), "an old unnamed one too");
        assert!(unnamed_new.exists(), "a new one may be about to be named");
        std::fs::remove_dir(&unnamed_new).unwrap();
        assert!(other.exists(), "a name of another form is left alone");
        sweep(base);
        assert!(live.path().exists());
        std::fs::remove_dir_all(&other).unwrap();
        assert!(private_name("kvfetch-exec-1-0123abcd"));
        for name in [
            "kvfetch-exec-1-0123abc",
            "kvfetch-exec--0123abcd",
            "kvfetch-1-0123abcd",
        ] {
            assert!(!private_name(name), "{name}");
        }
    }
}

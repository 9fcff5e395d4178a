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
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;

mod ground;
#[cfg(test)]
use ground::*;
pub use ground::{
    can_chown, check_target, check_writable_dir, differs, dir_mode, ensure_dir, euid, exposure,
    on_memory_fs, remove_file, same_path, sweep_stale_temps,
};

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
        let existed = fs::symlink_metadata(&self.target).is_ok();
        if existed {
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
        let backup = match existed {
            true => Some(self.keep_old().map_err(fail)?),
            false => None,
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

    /// Drop the old file for good; the directory to sync.
    fn finish(self) -> PathBuf {
        let (old, target) = match self {
            Moved::Exchanged { temp, target } => (Some(temp), target),
            Moved::Replaced { backup, target } => (backup, target),
        };
        if let Some(old) = old {
            let _ = fs::remove_file(old);
        }
        dir_of(&target).to_path_buf()
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
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    dir.join(format!(
        "{TEMP_PREFIX}{}-{:08x}",
        PID.get_or_init(std::process::id),
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
    // The umask, a default ACL or a mount's fmask may have changed the mode; set it exactly
    // before any byte is written (on a file system that cannot hold it, this fails: refused).
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
    let staged = stage_all(items)?;
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
    let dirs: std::collections::HashSet<PathBuf> = moved.into_iter().map(Moved::finish).collect();
    // One sync per directory, after every move into it.
    for dir in dirs {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Stage every item (in order), or none: on a failure every temp file already written is
/// removed.
fn stage_all(items: &[(PathBuf, Vec<u8>, FileOptions)]) -> Result<Vec<Staged>, Error> {
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
    Ok(staged)
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

    /// Replacing files leaves the targets alone in the directory: the old files, swapped to the
    /// temp names, are removed once every move is done (a missed mutant of `Moved::finish`).
    #[test]
    fn a_rewrite_leaves_only_the_targets() {
        let d = Dir::new("rewrite");
        let opts = FileOptions {
            mode: 0o600,
            owner: None,
        };
        let (a, b) = (d.0.join("a"), d.0.join("b"));
        write_all(&[
            (a.clone(), b"1".to_vec(), opts),
            (b.clone(), b"2".to_vec(), opts),
        ])
        .unwrap();
        write_all(&[
            (a.clone(), b"3".to_vec(), opts),
            (b.clone(), b"4".to_vec(), opts),
        ])
        .unwrap();
        let mut names: Vec<String> = fs::read_dir(&d.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(fs::read(&a).unwrap(), b"3");
        assert_eq!(fs::read(&b).unwrap(), b"4");
    }

    /// The mode is set exactly, whatever narrowed it at creation: a default POSIX ACL on the
    /// directory replaces the umask (found in review: with the umask alone deciding whether to
    /// set the mode, 0444 became 0440 here, and a vfat `fmask` would widen 0400).
    #[test]
    fn a_default_acl_on_the_directory_does_not_narrow_the_mode() {
        let d = Dir::new("acl");
        // system.posix_acl_default: version 2, then (tag, perm, id) entries: user::rwx,
        // group::r-x, other::---.
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 0)] {
            acl.extend(tag.to_le_bytes());
            acl.extend(perm.to_le_bytes());
            acl.extend(u32::MAX.to_le_bytes());
        }
        let path = CString::new(d.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path, a valid attribute name, and a buffer of the length given.
        let rc = unsafe {
            libc::setxattr(
                path.as_ptr(),
                c"system.posix_acl_default".as_ptr(),
                acl.as_ptr().cast(),
                acl.len(),
                0,
            )
        };
        if rc != 0 {
            return skip("no POSIX ACLs on the temp directory's file system");
        }
        let f = d.0.join("secret");
        let opts = FileOptions {
            mode: 0o444,
            owner: None,
        };
        write_temp(&f, b"v", opts).unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
            0o444
        );
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

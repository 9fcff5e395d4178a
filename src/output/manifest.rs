//! `--stale-ok`'s manifest: what kvfetch wrote and when, so that a later run, facing a vault or
//! identity outage, keeps only outputs that are exactly what kvfetch itself wrote.
//!
//! `.kvfetch-manifest.json` lies beside the outputs (in `--dir`, else beside the env file), mode
//! 0600, written like every output (temp file, fsync, rename). It holds, per output: its path,
//! the SHA-256 of its bytes, its mode, uid and gid, and the target of a symlink (the atomic
//! layout's names); plus the time of the write (UTC seconds). Never a value: a digest of a
//! high-entropy secret tells nothing of it, and the file is readable by its owner only.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::files::{self, FileOptions};
use crate::error::Error;

/// The manifest's file name (reserved: no output may take it).
pub const NAME: &str = ".kvfetch-manifest.json";

/// The largest manifest read (a few hundred bytes per output).
const MAX_MANIFEST: u64 = 1 << 20;

/// The largest output read to check it (a secret is at most 1 MiB; an env file or a template
/// holds several).
const MAX_OUTPUT: u64 = 64 << 20;

/// The most outputs a manifest may list (kvfetch writes one per secret in `--dir`, the env
/// file and the templates).
const MAX_ENTRIES: usize = 1024;

/// The most bytes read across all the outputs a manifest lists, whatever their number.
const MAX_TOTAL: u64 = 256 << 20;

/// How far in the future a manifest's time may be (clock steps) before it is refused.
const FUTURE_SLACK: u64 = 300;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Manifest {
    version: u32,
    /// When the outputs were written (Unix seconds, UTC).
    written: u64,
    /// A digest of what the flags asked for (each secret's vault, name, version and options,
    /// the selection, the formats): outputs written for other flags are not kept.
    #[serde(default)]
    asked: String,
    files: Vec<Entry>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Entry {
    path: PathBuf,
    /// A symlink's target (the atomic layout's visible names), else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<PathBuf>,
    sha256: String,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Where the manifest of these outputs lives: in `dir`, else beside `env_file`.
pub fn path(dir: Option<&Path>, env_file: Option<&Path>) -> Option<PathBuf> {
    match (dir, env_file) {
        (Some(d), _) => Some(d.join(NAME)),
        (None, Some(f)) => {
            let parent = f.parent().filter(|p| !p.as_os_str().is_empty());
            Some(parent.unwrap_or(Path::new(".")).join(NAME))
        }
        (None, None) => None,
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Record `outputs` as they are on disk now, written at `written`, in the manifest at `at`.
pub fn record(at: &Path, outputs: &[PathBuf], written: u64, asked: &str) -> Result<(), Error> {
    let files = outputs
        .iter()
        .map(|p| {
            inspect(p).map_err(|why| {
                Error::Output(format!(
                    "cannot record {} in the --stale-ok manifest {}: {why}",
                    p.display(),
                    at.display()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = Manifest {
        version: 1,
        written,
        asked: asked.to_string(),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| {
        Error::Output(format!(
            "cannot write the --stale-ok manifest {}: {e}",
            at.display()
        ))
    })?;
    let private = FileOptions {
        mode: 0o600,
        owner: None,
    };
    files::write_all(&[(at.to_path_buf(), json, private)])
}

/// What [`check`] found: the outputs are kvfetch's, written `age` ago.
#[derive(Debug)]
pub struct Kept {
    pub age: Duration,
    pub files: usize,
}

/// Check that the manifest at `at` vouches for the outputs on disk: it is this user's and
/// private, at most `max_age` old, names every path in `required` (and nothing `allowed` does
/// not accept), and every file it names is exactly as written (bytes, mode, owner, symlink
/// target). `Err` is the reason, for a message.
pub fn check(
    at: &Path,
    required: &[PathBuf],
    allowed: &dyn Fn(&Path) -> bool,
    max_age: Duration,
    now: u64,
    asked: &str,
) -> Result<Kept, String> {
    let shown = at.display();
    // Opened never through a symlink, then judged by `fstat` of what was opened and read from
    // that descriptor: no swap between a check and the read.
    let file = open_nofollow(at).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => {
            format!("no manifest {shown}: no earlier kvfetch with --stale-ok wrote these outputs")
        }
        Some(libc::ELOOP) => format!("the manifest {shown} is not a regular file (a symlink)"),
        _ => format!("cannot read the manifest {shown}: {e}"),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the manifest {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("the manifest {shown} is not a regular file"));
    }
    if meta.uid() != files::euid() || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "the manifest {shown} is not this user's private file (owner {}, mode {:04o})",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    let bytes = read_bounded(file, MAX_MANIFEST)
        .map_err(|e| format!("cannot read the manifest {shown}: {e}"))?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|_| format!("the manifest {shown} is not one kvfetch wrote (not its JSON)"))?;
    if m.version != 1 {
        return Err(format!(
            "the manifest {shown} has version {}, which this kvfetch does not know",
            m.version
        ));
    }
    if m.asked != asked {
        return Err(format!(
            "the outputs in {shown} were written for other flags: a vault, a secret's name or version, an option, the selection or a format changed since; kvfetch keeps only what it wrote for the same flags"
        ));
    }
    if m.written > now.saturating_add(FUTURE_SLACK) {
        return Err(format!(
            "the manifest {shown} says it was written {}s in the future; refusing it",
            m.written - now
        ));
    }
    let age = Duration::from_secs(now.saturating_sub(m.written));
    if age > max_age {
        return Err(format!(
            "the outputs were written {} ago, more than --stale-ok {}",
            crate::base::retry::human(age),
            crate::base::retry::human(max_age)
        ));
    }
    if let Some(missing) = required
        .iter()
        .find(|r| !m.files.iter().any(|e| &e.path == *r))
    {
        return Err(format!(
            "{} is not among the outputs the manifest lists (the flags changed since?)",
            missing.display()
        ));
    }
    if m.files.len() > MAX_ENTRIES {
        return Err(format!(
            "the manifest {shown} lists {} files, more outputs than kvfetch writes (at most {MAX_ENTRIES})",
            m.files.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = m.files.iter().find(|e| !seen.insert(&e.path)) {
        return Err(format!(
            "the manifest {shown} lists {} twice; it is not one kvfetch wrote",
            twice.path.display()
        ));
    }
    let mut total: u64 = 0;
    for e in &m.files {
        if !allowed(&e.path) {
            return Err(format!(
                "the manifest lists {}, which these flags do not write",
                e.path.display()
            ));
        }
        let (now_there, size) =
            inspect_sized(&e.path).map_err(|why| format!("{}: {why}", e.path.display()))?;
        total = total.saturating_add(size);
        if total > MAX_TOTAL {
            return Err(format!(
                "the outputs the manifest {shown} lists hold more than {} MiB in all; refusing to read more",
                MAX_TOTAL >> 20
            ));
        }
        if let Some(what) = difference(e, &now_there) {
            return Err(format!(
                "{} is not what kvfetch wrote: its {what} changed",
                e.path.display()
            ));
        }
    }
    Ok(Kept {
        age,
        files: m.files.len(),
    })
}

/// What differs between a recorded entry and the file now, if anything.
fn difference(was: &Entry, now: &Entry) -> Option<&'static str> {
    if was.link != now.link {
        Some("symlink target")
    } else if was.sha256 != now.sha256 {
        Some("content")
    } else if was.mode != now.mode {
        Some("mode")
    } else if was.uid != now.uid || was.gid != now.gid {
        Some("owner")
    } else {
        None
    }
}

/// Open `path` for reading: never through a symlink (`O_NOFOLLOW`), never blocking on a FIFO
/// (`O_NONBLOCK`), close-on-exec.
fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// At most `max` bytes of `file`, or an error if it holds more.
fn read_bounded(file: std::fs::File, max: u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("it is larger than {} MiB", max >> 20));
    }
    Ok(bytes)
}

/// An output as it is on disk (see [`inspect_sized`]).
fn inspect(path: &Path) -> Result<Entry, String> {
    inspect_sized(path).map(|(entry, _)| entry)
}

/// An output as it is on disk, and how many bytes it holds: a regular file (or a symlink to
/// one, whose target is noted), read without blocking and with a bound, judged by `fstat` of
/// what was opened. A regular file is opened with `O_NOFOLLOW` and must be the very inode
/// `lstat` saw; a symlink's target is read, the file opened through it, and both the link (read
/// again) and the inode (`stat`) must be unchanged afterwards.
fn inspect_sized(path: &Path) -> Result<(Entry, u64), String> {
    let missing = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => "it is missing".to_string(),
        _ => e.to_string(),
    };
    let lmeta = std::fs::symlink_metadata(path).map_err(missing)?;
    let changed = || "it changed while it was read".to_string();
    let (file, link) = if lmeta.file_type().is_symlink() {
        let link = std::fs::read_link(path).map_err(|e| e.to_string())?;
        let file = crate::base::file::open_nonblocking(path).map_err(missing)?;
        let meta = std::fs::metadata(path).map_err(missing)?;
        let fmeta = file.metadata().map_err(|e| e.to_string())?;
        let again = std::fs::read_link(path).map_err(|_| changed())?;
        if again != link || meta.dev() != fmeta.dev() || meta.ino() != fmeta.ino() {
            return Err(changed());
        }
        (file, Some(link))
    } else {
        let file = open_nofollow(path).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => changed(),
            _ => missing(e),
        })?;
        let fmeta = file.metadata().map_err(|e| e.to_string())?;
        if fmeta.dev() != lmeta.dev() || fmeta.ino() != lmeta.ino() {
            return Err(changed());
        }
        (file, None)
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    let bytes = read_bounded(file, MAX_OUTPUT)
        .map_err(|_| "it is larger than any output kvfetch writes".to_string())?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let sha256 = crate::base::encoding::hex(digest.as_ref());
    let entry = Entry {
        path: path.to_path_buf(),
        link,
        sha256,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    };
    Ok((entry, bytes.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kvfetch-manifest-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn vouches_for_what_it_recorded_and_holds_no_value() {
        let dir = scratch("ok");
        let (a, b) = (dir.join("a"), dir.join("b"));
        write(&a, b"first-value");
        write(&b, b"second-value");
        let at = dir.join(NAME);
        record(&at, &[a.clone(), b.clone()], now(), "asked").unwrap();
        let text = std::fs::read_to_string(&at).unwrap();
        assert!(!text.contains("first-value") && !text.contains("second-value"));
        assert_eq!(
            std::fs::metadata(&at).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let kept = check(
            &at,
            std::slice::from_ref(&a),
            &|_| true,
            HOUR,
            now(),
            "asked",
        )
        .unwrap();
        assert_eq!(kept.files, 2);
        // Too old, from the future, a path the flags no longer write, one not listed.
        let later = now() + 2 * 3600;
        assert!(
            check(&at, &[], &|_| true, HOUR, later, "asked")
                .unwrap_err()
                .contains("ago")
        );
        assert!(
            check(&at, &[], &|_| true, HOUR, now() - 3600, "asked")
                .unwrap_err()
                .contains("future")
        );
        assert!(
            check(&at, &[], &|p| p != b, HOUR, now(), "asked")
                .unwrap_err()
                .contains("do not write")
        );
        let c = dir.join("c");
        assert!(
            check(&at, &[c], &|_| true, HOUR, now(), "asked")
                .unwrap_err()
                .contains("not among")
        );
    }

    #[test]
    fn refuses_outputs_changed_in_any_way() {
        let dir = scratch("changed");
        let a = dir.join("a");
        let at = dir.join(NAME);
        let reset = || {
            let _ = std::fs::remove_file(&a);
            write(&a, b"value");
            record(&at, std::slice::from_ref(&a), now(), "asked").unwrap();
        };
        let refused = |what: &str| {
            let e = check(&at, &[], &|_| true, HOUR, now(), "asked").unwrap_err();
            assert!(e.contains(what) && e.contains("/a"), "{what}: {e}");
        };
        reset();
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&a, b"other").unwrap();
        refused("content");
        reset();
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o440)).unwrap();
        refused("mode");
        reset();
        std::fs::remove_file(&a).unwrap();
        refused("missing");
        reset();
        std::fs::remove_file(&a).unwrap();
        std::os::unix::fs::symlink(dir.join(NAME), &a).unwrap();
        refused("symlink");
        // A manifest others may write is not trusted.
        reset();
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o622)).unwrap();
        assert!(
            check(&at, &[], &|_| true, HOUR, now(), "asked")
                .unwrap_err()
                .contains("private")
        );
        std::fs::remove_file(&at).unwrap();
        assert!(
            check(&at, &[], &|_| true, HOUR, now(), "asked")
                .unwrap_err()
                .contains("no manifest")
        );
    }

    #[test]
    fn refuses_a_manifest_reached_through_a_symlink_or_listing_a_path_twice() {
        let dir = scratch("nofollow");
        let a = dir.join("a");
        write(&a, b"value");
        let real = dir.join("real.json");
        record(&real, std::slice::from_ref(&a), now(), "asked").unwrap();
        assert!(check(&real, &[], &|_| true, HOUR, now(), "asked").is_ok());
        // A symlink to a valid manifest of ours is not opened (O_NOFOLLOW).
        let at = dir.join(NAME);
        std::os::unix::fs::symlink(&real, &at).unwrap();
        let e = check(&at, &[], &|_| true, HOUR, now(), "asked").unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(&at).unwrap();
        // The same output listed twice.
        record(&at, &[a.clone(), a.clone()], now(), "asked").unwrap();
        let e = check(&at, &[], &|_| true, HOUR, now(), "asked").unwrap_err();
        assert!(e.contains("twice"), "{e}");
        // Entries beyond the cap.
        std::fs::remove_file(&at).unwrap();
        let many: Vec<PathBuf> = (0..=MAX_ENTRIES)
            .map(|i| {
                let p = dir.join(format!("f{i}"));
                write(&p, b"");
                p
            })
            .collect();
        record(&at, &many, now(), "asked").unwrap();
        let e = check(&at, &[], &|_| true, HOUR, now(), "asked").unwrap_err();
        assert!(e.contains("more outputs"), "{e}");
    }
}

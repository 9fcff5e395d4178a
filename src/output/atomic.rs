//! `--dir-layout atomic`: Kubernetes' AtomicWriter layout, so that every file of a write
//! changes at one instant.
//!
//! ```text
//! DIR/..2026_12_07_10_15_00.482913047/   one generation: every file, final mode and owner
//! DIR/..data -> ..2026_12_07_10_15_00.482913047
//! DIR/db     -> ..data/db
//! ```
//!
//! A write fills a new hidden generation directory, then makes `..data` point at it with one
//! `rename` of a fresh symlink: a reader that resolves `..data` (or opens DIR/NAME) sees the
//! old generation or the new one, never a mix. Visible names are symlinks through `..data`;
//! they are added or removed after the flip, and old generations are deleted last.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::files::{FileOptions, TEMP_PREFIX, dir_mode};
use crate::base::stamps::civil_from_days;
use crate::error::Error;

/// The symlink that names the current generation.
pub const DATA: &str = "..data";

/// Whether `path` is, or lies under, a name the atomic layout of `dir` reserves: every entry of
/// `dir` whose name starts with `..` (`..data`, generations, names a later version may use).
/// An output there would be lost at the next flip or break every link (`..data` as a file).
/// The comparison resolves both paths where they exist (`DIR/./..data`, a symlinked `DIR`).
pub fn reserved(dir: &Path, path: &Path) -> bool {
    use std::path::Component;
    let parts: Vec<Component> = path.components().collect();
    parts.iter().enumerate().any(|(i, c)| {
        let Component::Normal(name) = c else {
            return false;
        };
        name.as_encoded_bytes().starts_with(b"..")
            && same_dir(&parts[..i].iter().collect::<PathBuf>(), dir)
    })
}

/// Whether `a` and `b` name one directory: resolved when both exist, else compared as absolute
/// paths without `.` components.
fn same_dir(a: &Path, b: &Path) -> bool {
    let a = if a.as_os_str().is_empty() {
        Path::new(".")
    } else {
        a
    };
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => match (std::path::absolute(a), std::path::absolute(b)) {
            (Ok(x), Ok(y)) => x.components().eq(y.components()),
            _ => a.components().eq(b.components()),
        },
    }
}

/// A generation written and synced, with the symlink that will become `..data`.
pub struct Prepared {
    dir: PathBuf,
    generation: String,
    link: PathBuf,
    names: Vec<String>,
}

/// Whether `name` is a generation directory's name (`..` then digits and `_`, `.`, digits).
fn is_generation(name: &str) -> bool {
    name.strip_prefix("..").is_some_and(|rest| {
        rest.len() > 20
            && rest.starts_with(|c: char| c.is_ascii_digit())
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'_' || b == b'.')
    })
}

/// `..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN` (UTC, then random digits).
fn generation_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, secs) = ((now / 86_400) as i64, now % 86_400);
    let (y, m, d) = civil_from_days(days);
    let n = (crate::base::retry::random_unit() * 1e9) as u64 % 1_000_000_000;
    format!(
        "..{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}.{n:09}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn output_error(what: String, e: io::Error) -> Error {
    let msg = format!("{what}: {e}");
    Error::from_io(&e, Error::Output, msg)
}

/// The generation `..data` names now, if it is one of ours.
pub fn current(dir: &Path) -> Option<String> {
    let target = fs::read_link(dir.join(DATA)).ok()?;
    let name = target.to_str()?;
    is_generation(name).then(|| name.to_string())
}

/// The names whose files differ from `files` in the current generation (all of them when there
/// is none), and whether anything else is off: a visible name that is not the symlink through
/// `..data`, or a file in the generation that should not be there.
pub fn stale(dir: &Path, files: &[(String, Vec<u8>)], opts: FileOptions) -> (Vec<String>, bool) {
    let Some(generation) = current(dir) else {
        return (files.iter().map(|(n, _)| n.clone()).collect(), true);
    };
    let gen_dir = dir.join(&generation);
    let differ = files
        .iter()
        .filter(|(n, bytes)| super::files::differs(&gen_dir.join(n), bytes, opts))
        .map(|(n, _)| n.clone())
        .collect();
    let linked = |n: &str| fs::read_link(dir.join(n)).ok() == Some(Path::new(DATA).join(n));
    let extra = fs::read_dir(&gen_dir)
        .map(|entries| entries.flatten().count() != files.len())
        .unwrap_or(true);
    (differ, extra || !files.iter().all(|(n, _)| linked(n)))
}

/// Before anything is written: `..data` is absent or a symlink, and each visible name is absent,
/// a file or a symlink (replaced, never followed), so the flip and the links cannot fail on
/// what is there.
pub fn check(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), Error> {
    let data = dir.join(DATA);
    match fs::symlink_metadata(&data) {
        Ok(m) if !m.file_type().is_symlink() => {
            return Err(Error::Output(format!(
                "{} exists and is not a symlink; --dir-layout atomic needs that name: remove it",
                data.display()
            )));
        }
        _ => {}
    }
    for (name, _) in files {
        super::files::check_target(&dir.join(name))?;
    }
    Ok(())
}

/// Remove what a killed run left: temp links and generations `..data` does not name.
pub fn sweep(dir: &Path) -> usize {
    let current = current(dir);
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(String::from) else {
            continue;
        };
        let temp_link = name.starts_with(&format!("{TEMP_PREFIX}data-"))
            || name.starts_with(&format!("{TEMP_PREFIX}link-"));
        let gone = if is_generation(&name) && Some(&name) != current.as_ref() {
            fs::remove_dir_all(entry.path()).is_ok()
        } else if temp_link && entry.file_type().is_ok_and(|t| t.is_symlink()) {
            fs::remove_file(entry.path()).is_ok()
        } else {
            false
        };
        removed += usize::from(gone);
    }
    removed
}

/// Write a new generation holding `files` (nothing visible changes yet).
pub fn prepare(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    opts: FileOptions,
) -> Result<Prepared, Error> {
    let generation = generation_name();
    let link = dir.join(format!("{TEMP_PREFIX}data-{}", &generation[2..]));
    let prepared = Prepared {
        dir: dir.to_path_buf(),
        generation,
        link,
        names: files.iter().map(|(n, _)| n.clone()).collect(),
    };
    match prepared.fill(files, opts) {
        Ok(()) => Ok(prepared),
        Err(e) => {
            prepared.discard();
            Err(e)
        }
    }
}

impl Prepared {
    fn gen_dir(&self) -> PathBuf {
        self.dir.join(&self.generation)
    }

    fn fill(&self, files: &[(String, Vec<u8>)], opts: FileOptions) -> Result<(), Error> {
        let gen_dir = self.gen_dir();
        let fail = |e| output_error(format!("cannot write {}", gen_dir.display()), e);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&gen_dir)
            .map_err(fail)?;
        let handle = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&gen_dir)
            .map_err(fail)?;
        handle
            .set_permissions(fs::Permissions::from_mode(dir_mode(opts.mode)))
            .map_err(fail)?;
        if let Some((uid, gid)) = opts.owner {
            std::os::unix::fs::fchown(&handle, Some(uid), gid).map_err(fail)?;
        }
        for (name, bytes) in files {
            let path = gen_dir.join(name);
            super::files::write_temp(&path, bytes, opts)
                .map_err(|e| output_error(format!("cannot write {}", path.display()), e))?;
        }
        handle.sync_all().map_err(fail)?;
        std::os::unix::fs::symlink(&self.generation, &self.link)
            .map_err(|e| output_error(format!("cannot create {}", self.link.display()), e))
    }

    /// Throw the new generation away; nothing visible changed.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.link);
        let _ = fs::remove_dir_all(self.gen_dir());
    }

    /// Flip `..data` to the new generation (one rename), then make the visible names match it
    /// and delete the old generations. If a name cannot be linked, `..data` flips back and the
    /// new generation is thrown away: the directory is as it was.
    pub fn commit(self) -> Result<(), Error> {
        let data = self.dir.join(DATA);
        let before = current(&self.dir);
        if let Err(e) = fs::rename(&self.link, &data) {
            let e = output_error(format!("cannot replace {}", data.display()), e);
            self.discard();
            return Err(e);
        }
        let mut made = Vec::new();
        for name in &self.names {
            match self.link_name(name) {
                Ok(true) => made.push(name.clone()),
                Ok(false) => {}
                Err(e) => {
                    self.roll_back(before.as_deref(), &made);
                    return Err(e);
                }
            }
        }
        let _ = fs::File::open(&self.dir).and_then(|d| d.sync_all());
        self.prune();
        Ok(())
    }

    /// Point `..data` at `before` again (or remove it), drop the links just made, and throw the
    /// new generation away.
    fn roll_back(self, before: Option<&str>, made: &[String]) {
        let data = self.dir.join(DATA);
        match before {
            Some(old) => {
                let back = self
                    .dir
                    .join(format!("{TEMP_PREFIX}data-back-{}", &self.generation[2..]));
                let _ =
                    std::os::unix::fs::symlink(old, &back).and_then(|()| fs::rename(&back, &data));
            }
            None => {
                let _ = fs::remove_file(&data);
            }
        }
        for name in made {
            let _ = fs::remove_file(self.dir.join(name));
        }
        self.discard();
    }

    /// Make `DIR/NAME` the symlink `..data/NAME` (replacing, never following, what is there);
    /// true when a link was made.
    fn link_name(&self, name: &str) -> Result<bool, Error> {
        let visible = self.dir.join(name);
        let target = Path::new(DATA).join(name);
        if fs::read_link(&visible).ok().as_deref() == Some(target.as_path()) {
            return Ok(false);
        }
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}link-{}-{name}",
            &self.generation[2..]
        ));
        let _ = fs::remove_file(&temp);
        std::os::unix::fs::symlink(&target, &temp)
            .and_then(|()| fs::rename(&temp, &visible))
            .map(|()| true)
            .map_err(|e| {
                let _ = fs::remove_file(&temp);
                output_error(format!("cannot link {}", visible.display()), e)
            })
    }

    /// Remove visible links through `..data` to names this generation lacks, and every other
    /// generation (a killed run's included).
    fn prune(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(String::from) else {
                continue;
            };
            if is_generation(&name) && name != self.generation {
                let _ = fs::remove_dir_all(entry.path());
            } else if !self.names.contains(&name)
                && fs::read_link(entry.path()).ok() == Some(Path::new(DATA).join(&name))
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// `--cleanup`: remove the visible links, `..data` and every generation.
pub fn remove_all(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(String::from) else {
            continue;
        };
        if is_generation(&name) {
            let _ = fs::remove_dir_all(entry.path());
        } else if name == DATA
            || fs::read_link(entry.path()).ok() == Some(Path::new(DATA).join(&name))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_dir_starting_with_two_dots_are_reserved() {
        let dir = Path::new("/nonexistent-kvfetch/out");
        for p in [
            "/nonexistent-kvfetch/out/..data",
            "/nonexistent-kvfetch/out/./..data",
            "/nonexistent-kvfetch/out/..data/x",
            "/nonexistent-kvfetch/out/..2026_01_01_00_00_00.1",
            "/nonexistent-kvfetch/out/..anything",
        ] {
            assert!(reserved(dir, Path::new(p)), "{p}");
        }
        for p in [
            "/nonexistent-kvfetch/..data",
            "/nonexistent-kvfetch/out/data",
            "/nonexistent-kvfetch/out/.data",
            "/nonexistent-kvfetch/out/sub/..data",
            "/nonexistent-kvfetch/out/a..b",
        ] {
            assert!(!reserved(dir, Path::new(p)), "{p}");
        }
        let cwd = std::env::current_dir().unwrap();
        assert!(reserved(
            Path::new("out-kvfetch-x"),
            &cwd.join("out-kvfetch-x/..data")
        ));
        assert!(reserved(
            &cwd.join("out-kvfetch-x"),
            Path::new("./out-kvfetch-x/..data")
        ));
    }

    const OPTS: FileOptions = FileOptions {
        mode: 0o400,
        owner: None,
    };

    fn files(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn generations_flip_and_old_ones_go() {
        let d = std::env::temp_dir().join(format!("kvfetch-atomic-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir(&d).unwrap();
        let one = files(&[("a", "1"), ("b", "1")]);
        assert!(stale(&d, &one, OPTS).1);
        prepare(&d, &one, OPTS).unwrap().commit().unwrap();
        let first = current(&d).unwrap();
        assert_eq!(stale(&d, &one, OPTS), (vec![], false));
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "1");
        assert_eq!(fs::read_link(d.join("b")).unwrap(), Path::new("..data/b"));
        let meta = fs::metadata(d.join(&first).join("a")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o400);
        // b goes, c comes, a changes.
        let two = files(&[("a", "2"), ("c", "2")]);
        assert_eq!(stale(&d, &two, OPTS).0, ["a", "c"]);
        prepare(&d, &two, OPTS).unwrap().commit().unwrap();
        let second = current(&d).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            listing(&d),
            [second.clone(), "..data".into(), "a".into(), "c".into()]
        );
        assert_eq!(fs::read_to_string(d.join("c")).unwrap(), "2");
        // A discarded generation leaves nothing behind.
        prepare(&d, &one, OPTS).unwrap().discard();
        assert_eq!(listing(&d).len(), 4);
        remove_all(&d);
        assert!(listing(&d).is_empty());
        fs::remove_dir(&d).unwrap();
    }

    /// A fresh, empty directory for one test.
    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kvfetch-atomic-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn reserved_resolves_existing_and_symlinked_dirs() {
        let d = scratch("reserved");
        let (real, alias, other) = (d.join("real"), d.join("alias"), d.join("other"));
        fs::create_dir(&real).unwrap();
        fs::create_dir(&other).unwrap();
        std::os::unix::fs::symlink(&real, &alias).unwrap();
        assert!(reserved(&real, &real.join("..data")));
        assert!(reserved(&alias, &real.join("..data")));
        assert!(reserved(&real, &alias.join("..data")));
        assert!(!reserved(&real, &other.join("..data")));
        assert!(!reserved(&real, &real.join("data")));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn civil_from_days_counts_every_day_like_a_calendar() {
        // Day by day from 1970 through 2401: leap years, 2000 and 2400 (leap), 2100, 2200 and
        // 2300 (not), and the 400-year eras that start on 2000-03-01 and 2400-03-01.
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days = 0;
        for y in 1970..2402 {
            for m in 1..=12u32 {
                let len = match m {
                    2 if leap(y) => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                for d in 1..=len {
                    assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
                    days += 1;
                }
            }
        }
    }

    #[test]
    fn generation_names_are_the_utc_time_and_random_digits() {
        let stamp = |t: u64| {
            let (y, m, d) = civil_from_days((t / 86_400) as i64);
            let s = t % 86_400;
            format!(
                "..{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}.",
                s / 3600,
                s / 60 % 60,
                s % 60
            )
        };
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        let mut suffixes = std::collections::HashSet::new();
        for _ in 0..20 {
            let before = now();
            let name = generation_name();
            let after = now();
            assert_eq!(name.len(), 31, "{name}");
            assert!(is_generation(&name), "{name}");
            let (time, digits) = name.split_at(22);
            assert!(time == stamp(before) || time == stamp(after), "{name}");
            assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{name}");
            suffixes.insert(digits.to_string());
        }
        // 20 draws from 10^9: a repeat means the digits are not random.
        assert_eq!(suffixes.len(), 20, "{suffixes:?}");
    }

    #[test]
    fn check_refuses_what_the_flip_cannot_replace() {
        let d = scratch("check");
        let one = files(&[("a", "1")]);
        assert!(check(&d, &one).is_ok());
        fs::create_dir(d.join(DATA)).unwrap();
        assert!(check(&d, &one).is_err(), "..data a directory");
        fs::remove_dir(d.join(DATA)).unwrap();
        fs::write(d.join(DATA), "x").unwrap();
        assert!(check(&d, &one).is_err(), "..data a file");
        fs::remove_file(d.join(DATA)).unwrap();
        std::os::unix::fs::symlink("..anything", d.join(DATA)).unwrap();
        assert!(check(&d, &one).is_ok(), "..data a symlink is replaced");
        fs::create_dir(d.join("a")).unwrap();
        assert!(
            check(&d, &one).is_err(),
            "a visible name that is a directory"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stale_sees_each_kind_of_drift() {
        let d = scratch("stale");
        let two = files(&[("a", "1"), ("b", "1")]);
        assert_eq!(stale(&d, &two, OPTS), (vec!["a".into(), "b".into()], true));
        prepare(&d, &two, OPTS).unwrap().commit().unwrap();
        assert_eq!(stale(&d, &two, OPTS), (vec![], false));
        // One value changed: that name only, nothing else off.
        let changed = files(&[("a", "1"), ("b", "2")]);
        assert_eq!(stale(&d, &changed, OPTS), (vec!["b".into()], false));
        // One name fewer: the generation holds a file it should not.
        assert_eq!(stale(&d, &files(&[("a", "1")]), OPTS), (vec![], true));
        // A visible name that is a plain file, not the link through ..data.
        fs::remove_file(d.join("a")).unwrap();
        fs::write(d.join("a"), "1").unwrap();
        assert_eq!(stale(&d, &two, OPTS), (vec![], true));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sweep_removes_a_killed_runs_leftovers_only() {
        let d = scratch("sweep");
        let one = files(&[("a", "1")]);
        prepare(&d, &one, OPTS).unwrap().commit().unwrap();
        let current = current(&d).unwrap();
        let orphan = "..2026_01_01_00_00_00.000000001";
        fs::create_dir(d.join(orphan)).unwrap();
        fs::write(d.join(orphan).join("a"), "0").unwrap();
        let data_link = format!("{TEMP_PREFIX}data-2026_01_01_00_00_00.000000001");
        let name_link = format!("{TEMP_PREFIX}link-2026_01_01_00_00_00.000000001-a");
        std::os::unix::fs::symlink(orphan, d.join(&data_link)).unwrap();
        std::os::unix::fs::symlink("..data/a", d.join(&name_link)).unwrap();
        let not_a_link = format!("{TEMP_PREFIX}data-file");
        fs::write(d.join(&not_a_link), "").unwrap();
        fs::write(d.join("keep"), "").unwrap();
        assert_eq!(sweep(&d), 3);
        let mut want = vec![current, DATA.into(), not_a_link, "a".into(), "keep".into()];
        want.sort();
        assert_eq!(listing(&d), want);
        assert_eq!(sweep(&d), 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_name_that_cannot_be_linked_rolls_everything_back() {
        let d = scratch("rollback");
        // No generation before: ..data and the links just made go, nothing else.
        fs::create_dir_all(d.join("b").join("full")).unwrap();
        let err = prepare(&d, &files(&[("a", "1"), ("b", "1")]), OPTS)
            .unwrap()
            .commit();
        assert!(err.is_err());
        assert_eq!(listing(&d), ["b"]);
        // A generation before: ..data points at it again, its links (made before) stay.
        fs::write(d.join("keep"), "").unwrap();
        prepare(&d, &files(&[("a", "1")]), OPTS)
            .unwrap()
            .commit()
            .unwrap();
        let first = current(&d).unwrap();
        let err = prepare(&d, &files(&[("a", "2"), ("b", "2")]), OPTS)
            .unwrap()
            .commit();
        assert!(err.is_err());
        assert_eq!(current(&d), Some(first.clone()));
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "1");
        assert_eq!(
            listing(&d),
            [first, DATA.into(), "a".into(), "b".into(), "keep".into()]
        );
        // Unrelated files survive a commit and --cleanup.
        fs::remove_dir_all(d.join("b")).unwrap();
        prepare(&d, &files(&[("c", "3")]), OPTS)
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(listing(&d).len(), 4, "{:?}", listing(&d));
        assert!(d.join("keep").exists() && !d.join("a").exists());
        remove_all(&d);
        assert_eq!(listing(&d), ["keep"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn names_and_dates() {
        assert!(is_generation("..2026_12_07_10_15_00.482913047"));
        assert!(!is_generation("..data") && !is_generation("..") && !is_generation("db"));
        assert!(!is_generation("..2026_12_07_10_15_00.48/../x"));
        // More than 20 characters after the dots, the first a digit, then digits, `_` and `.`.
        assert!(is_generation(&format!("..{}", "1".repeat(21))));
        assert!(!is_generation(&format!("..{}", "1".repeat(20))));
        assert!(!is_generation("..2026") && !is_generation("..abcdefghijklmnopqrstuvw"));
        assert!(!is_generation("..2026_12_07_10_15_00.48291304x"));
        assert!(!is_generation("..2026-12-07-10-15-00.482913047"));
        assert!(is_generation(&generation_name()));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_429), (2025, 12, 7));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}

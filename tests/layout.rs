//! The house keeps its shape: the top-level modules of `src/` (its folders and files) depend on
//! each other in one direction only. A lower stage never reaches up; a shared type, a date helper
//! or a wipe lives low, where every user reaches it down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/vault/select.rs` → `vault`).
fn top_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without its tests (`#[cfg(test)]` to the end, as every file here has
/// its tests last) and without comment lines.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `text` names through `crate::NAME` or `use crate::{NAME, …}`.
fn used(text: &str, tops: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end].split(',').collect()
        } else {
            vec![rest]
        };
        for n in names {
            let n = n.trim();
            let end = n
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(n.len());
            if tops.contains(&n[..end]) {
                out.insert(n[..end].to_string());
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let tops: BTreeSet<String> = files
        .iter()
        .map(|f| top_of(f))
        .filter(|t| t != "main" && t != "lib")
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let top = top_of(f);
        if !tops.contains(&top) {
            continue;
        }
        let deps = used(&code(&std::fs::read_to_string(f).unwrap()), &tops);
        let entry = graph.entry(top.clone()).or_default();
        entry.extend(deps.into_iter().filter(|d| *d != top));
    }
    graph
}

/// A circle through `start`, if there is one (depth-first search).
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        at: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(at).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then(|| {
        path.push(start.to_string());
        path
    })
}

#[test]
fn no_two_top_level_modules_depend_on_each_other() {
    let g = graph();
    assert!(g.len() >= 5, "read only {g:?}: is the reader broken?");
    let circles: Vec<String> = g
        .keys()
        .filter_map(|m| circle(&g, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(
        circles.is_empty(),
        "circles among the top-level modules:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_circle_finder_finds_circles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let edge = |g: &mut BTreeMap<String, BTreeSet<String>>, a: &str, b: &str| {
        g.entry(a.into()).or_default().insert(b.into());
    };
    edge(&mut g, "a", "b");
    edge(&mut g, "b", "c");
    assert_eq!(circle(&g, "a"), None);
    edge(&mut g, "c", "a");
    assert_eq!(circle(&g, "a").unwrap().join(" "), "a b c a");
    let tops: BTreeSet<String> = ["vault", "base"].map(String::from).into();
    assert_eq!(
        used(
            "use crate::{base::log, vault};\nlet x = crate::vault::y;",
            &tops
        ),
        tops
    );
}

#[test]
fn the_top_level_is_a_handful_of_stages() {
    let n = std::fs::read_dir(src()).unwrap().count();
    assert!(n <= 14, "src/ holds {n} entries: group them into stages");
}

/// The packages of the lock file, by name.
/// Lines of a file before its unit tests (`mod tests`, last in every file here), or all of it.
fn lines_before_tests(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .position(|l| l.starts_with("mod tests"))
        .unwrap_or(lines.len())
}

/// No file holds more than about 500 lines before its tests: a module that grows past that is
/// doing two things.
#[test]
fn no_file_is_over_500_lines_before_its_tests() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .map(|f| (lines_before_tests(&std::fs::read_to_string(f).unwrap()), f))
        .filter(|(n, _)| *n > 500)
        .map(|(n, f)| format!("{} ({n} lines)", f.display()))
        .collect();
    assert!(long.is_empty(), "split these by what they do: {long:?}");
    assert_eq!(
        lines_before_tests("a\nb\n#[cfg(test)]\nmod tests {\n}\n"),
        3
    );
    assert_eq!(lines_before_tests("a\nb\n"), 2);
}

fn locked_packages() -> BTreeSet<String> {
    let lock = std::fs::read_to_string(src().with_file_name("Cargo.lock")).unwrap();
    lock.lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|l| l.trim_end_matches('"').to_string())
        .collect()
}

#[test]
fn the_mozilla_roots_are_linked_once() {
    let packages = locked_packages();
    // kvfetch needs the roots as certificates (to add SSL_CERT_FILE's and --ca-file's to
    // them): webpki-root-certs. ureq's `rustls` feature would add webpki-roots beside it.
    assert!(packages.contains("webpki-root-certs"), "{packages:?}");
    assert!(
        !packages.contains("webpki-roots"),
        "webpki-roots is back in Cargo.lock: a second copy of the Mozilla roots (ureq's `rustls` feature?)"
    );
}

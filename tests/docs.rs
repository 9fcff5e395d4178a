//! The docs stay true: every relative link in the README and `docs/` resolves (file and
//! heading), the README stays a short read, and the layout section of `docs/design.md` names
//! exactly what `src/` holds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fence = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fence = !fence;
                return false;
            }
            !fence
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (but `-` and `_`), spaces to
/// `-`; a repeated heading gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose(text) {
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#')) else {
            continue;
        };
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while seen.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        seen.insert(unique);
    }
    seen
}

/// The targets of inline links `[text](target)` in prose.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

fn check_link(from: &Path, target: &str) -> Result<(), String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return Ok(());
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        from.parent().unwrap().join(path)
    };
    if !file.exists() {
        return Err(format!("{}: {target}: no such file", from.display()));
    }
    if let Some(anchor) = anchor {
        let text = std::fs::read_to_string(&file).unwrap();
        if !anchors(&text).contains(anchor) {
            return Err(format!(
                "{}: {target}: no heading with that anchor",
                from.display()
            ));
        }
    }
    Ok(())
}

#[test]
fn every_relative_link_resolves_to_a_file_and_heading() {
    let mut broken = Vec::new();
    let mut count = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in links(&text) {
            count += 1;
            if let Err(e) = check_link(&file, &target) {
                broken.push(e);
            }
        }
    }
    assert!(
        count > 20,
        "found only {count} links: is the extractor broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_follow_githubs_rules() {
    let text = "# kvfetch\n## Many secrets at once: `--all`, `--prefix`, `--tag`\n\
                ```\n# not a heading\n```\n## Tests\n## Tests\n";
    let a = anchors(text);
    assert!(
        a.contains("many-secrets-at-once---all---prefix---tag"),
        "{a:?}"
    );
    assert!(a.contains("tests") && a.contains("tests-1"), "{a:?}");
    assert!(!a.contains("not-a-heading"));
    assert_eq!(links("[a](b.md#c) and [d](#e)\n"), ["b.md#c", "#e"]);
}

#[test]
fn the_readme_is_a_short_read() {
    let lines = std::fs::read_to_string(root().join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines <= 400,
        "README.md has {lines} lines; move detail to docs/"
    );
}

/// Every `src/…` path in the layout block of docs/design.md, as written.
fn layout_paths() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/design.md")).unwrap();
    let start = text.find("## Layout").expect("a Layout section");
    let block = &text[start..];
    let block = &block[block.find("```").unwrap() + 3..];
    let block = &block[..block.find("```").unwrap()];
    block
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("src/"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_layout_section_names_exactly_what_src_holds() {
    let named = layout_paths();
    for path in &named {
        assert!(
            root().join(path).exists(),
            "docs/design.md names {path}, which does not exist"
        );
    }
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let entry = entry.unwrap();
        let mut name = format!("src/{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            name.push('/');
        }
        if !named.contains(&name) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/design.md's layout does not name {missing:?}"
    );
}

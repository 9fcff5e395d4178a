//! How alike two short words are: the one comparison behind "did you mean --secret?" and
//! "did you mean NAME.vault.azure.net?", so that both slips are judged alike.
//!
//! May use: nothing.

/// Longest text compared, in characters: a longer one is no slip of a flag or a domain, and
/// comparing it would cost its length times each candidate's.
pub const MAX_LEN: usize = 64;

/// The candidate closest to `typed` and at most `within` edits from it (the first on a tie), or
/// `None`; a `typed` over [`MAX_LEN`] characters is compared with nothing.
pub fn closest<'c>(
    typed: &str,
    candidates: impl IntoIterator<Item = &'c str>,
    within: usize,
) -> Option<&'c str> {
    if typed.chars().count() > MAX_LEN {
        return None;
    }
    candidates
        .into_iter()
        .map(|c| (edit_distance(typed, c), c))
        .filter(|(d, _)| *d <= within)
        // `min_by_key` keeps the first of equal keys.
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance with a swap of two neighbours counted as one edit (optimal string
/// alignment), in three rows: time `a × b`, memory `3 × b`.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut two_up: Vec<usize> = Vec::new();
    let mut up: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (up[j] + 1).min(row[j - 1] + 1).min(up[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(two_up[j - 2] + 1);
            }
        }
        two_up = std::mem::replace(&mut up, row);
    }
    up[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook form: the whole matrix.
    fn matrix(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        d[0] = (0..=b.len()).collect();
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                d[i][j] = (d[i - 1][j] + 1)
                    .min(d[i][j - 1] + 1)
                    .min(d[i - 1][j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
                }
            }
        }
        d[a.len()][b.len()]
    }

    #[test]
    fn slips_cost_what_they_are() {
        for (a, b, d) in [
            ("secrte", "secret", 1),
            ("env-fiel", "env-file", 1),
            ("ca", "abc", 3),
            ("vault.azure.com", "vault.azure.net", 3),
            ("", "abc", 3),
            ("abc", "", 3),
            ("abc", "abc", 0),
            ("sceret", "secret", 1),
            ("dri", "dir", 1),
            ("tiemout", "timeout", 1),
            ("é", "e", 1),
        ] {
            assert_eq!(edit_distance(a, b), d, "{a} {b}");
            assert_eq!(edit_distance(b, a), d, "{b} {a}");
        }
    }

    #[test]
    fn the_closest_within_reach_and_the_first_on_a_tie() {
        let flags = ["dir", "debug", "timeout", "tag"];
        assert_eq!(closest("dri", flags, 2), Some("dir"));
        assert_eq!(closest("tga", flags, 2), Some("tag"));
        assert_eq!(closest("dig", flags, 1), Some("dir"), "dir before debug");
        assert_eq!(closest("timeoutxx", flags, 2), Some("timeout"));
        assert_eq!(closest("timeoutxxx", flags, 2), None, "three edits");
        assert_eq!(closest("zzz", flags, 2), None);
        assert_eq!(closest("dir", [], 2), None);
        let at = "a".repeat(MAX_LEN);
        let over = "a".repeat(MAX_LEN + 1);
        assert_eq!(closest(&at, [at.as_str()], 0), Some(at.as_str()));
        assert_eq!(closest(&over, [over.as_str()], 0), None, "not compared");
        let wide = "é".repeat(MAX_LEN);
        assert_eq!(
            closest(&wide, [wide.as_str()], 0),
            Some(wide.as_str()),
            "characters, not bytes"
        );
    }

    proptest::proptest! {
        #[test]
        fn three_rows_agree_with_the_whole_matrix(a in "[abc]{0,12}", b in "[abc]{0,12}") {
            let d = edit_distance(&a, &b);
            proptest::prop_assert_eq!(d, matrix(&a, &b));
            proptest::prop_assert_eq!(d, edit_distance(&b, &a));
            let (la, lb) = (a.chars().count(), b.chars().count());
            proptest::prop_assert!(la.abs_diff(lb) <= d && d <= la.max(lb));
            proptest::prop_assert_eq!(d == 0, a == b);
        }
    }
}

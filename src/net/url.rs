//! The one URL parser kvfetch uses for every URL it accepts (`--vault`, secret identifiers,
//! reference `SecretUri`s, `--notify-url`, identity endpoints).
//!
//! Why its own: a token must go to exactly the host that was checked. A general URL parser
//! accepts userinfo, queries, fragments, backslashes and percent-escapes, and two parsers (the
//! one that checks, the one that connects) can disagree about which part is the host
//! (`https://evil.test?.vault.azure.net`). This one accepts only `scheme://host[:port][/path]`
//! with a plain DNS name or IP literal as host and a path of plain characters, and the request
//! URL is rebuilt from the parsed parts, so the host connected to is the host checked by
//! construction.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A parsed URL: lower-cased scheme and host, optional port, and a plain path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    pub scheme: String,
    /// A lower-case DNS name, a dotted IPv4 address, or `[IPv6]` with brackets.
    pub host: String,
    pub port: Option<u16>,
    /// Empty or starting with `/`, of the characters [`path_char`] allows.
    pub path: String,
}

impl Url {
    /// `scheme://host[:port]`.
    pub fn origin(&self) -> String {
        match self.port {
            Some(p) => format!("{}://{}:{p}", self.scheme, self.host),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }

    /// The whole URL, rebuilt from its parts.
    pub fn full(&self) -> String {
        format!("{}{}", self.origin(), self.path)
    }
}

/// Why a URL was refused, in words for a usage message.
pub type Refusal = &'static str;

/// Parse `text` strictly. Refuses anything but `scheme://host[:port][/path]` where scheme is
/// `http` or `https`, host a DNS name (letters, digits, `-`, dot-separated labels of 1 to 63,
/// no leading or trailing dash or dot) or an IP literal, and path plain characters.
pub fn parse(text: &str) -> Result<Url, Refusal> {
    if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(if c.is_whitespace() {
            "it contains white space"
        } else if c.is_ascii_control() {
            "it contains a control character"
        } else {
            "it contains a character that is not plain ASCII"
        });
    }
    for (c, why) in [
        ('?', "it has a query ('?'), which kvfetch does not accept"),
        (
            '#',
            "it has a fragment ('#'), which kvfetch does not accept",
        ),
        (
            '@',
            "it has user information ('@'), which kvfetch does not accept",
        ),
        ('\\', "it contains a backslash"),
        ('%', "it contains a percent-escape"),
    ] {
        if text.contains(c) {
            return Err(why);
        }
    }
    let (scheme, rest) = text.split_once("://").ok_or("it is not scheme://host")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err("the scheme is not https (or http)");
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if !path.bytes().all(path_char) {
        return Err("the path contains a character other than letters, digits and -._~/");
    }
    let (host, port) = split_authority(authority)?;
    Ok(Url {
        scheme,
        host,
        port,
        path: path.to_string(),
    })
}

/// The characters a path may hold: RFC 3986 unreserved characters and `/`.
fn path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/')
}

fn split_authority(authority: &str) -> Result<(String, Option<u16>), Refusal> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address lacks its ']'")?;
        inside
            .parse::<Ipv6Addr>()
            .map_err(|_| "the host in [...] is not an IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after the IPv6 address")?),
        };
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    if !host.starts_with('[') && !valid_host(&host) {
        return Err("the host is not a plain DNS name or IP address");
    }
    let port = port.map(parse_port).transpose()?;
    Ok((host, port))
}

fn parse_port(p: &str) -> Result<u16, Refusal> {
    let ok = (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| p.parse::<u16>().ok())
        .flatten()
        .filter(|n| *n > 0)
        .ok_or("the port is not a number from 1 to 65535")
}

/// A DNS name of letter-digit-hyphen labels (1 to 63 each, 253 in all), or a dotted IPv4
/// address. A name whose last label is all digits must be a valid IPv4 address, so `1.2.3.999`
/// or `0x7f.1` are never taken as names.
fn valid_host(host: &str) -> bool {
    if host.len() > 253 {
        return false;
    }
    let labels_ok = host.split('.').all(|l| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    });
    let numeric_tail = host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && (!numeric_tail || host.parse::<Ipv4Addr>().is_ok())
}

/// Parse a URL that may carry a query: `--notify-url` only, as webhooks are often
/// authenticated by a token there. Everything before the first `?` must pass [`parse`] (so the
/// host is found as for every other URL); the query may hold RFC 3986 query characters and
/// well-formed percent-escapes, but no `#`, `@`, `\`, white space or control character.
/// Returns the URL and the query (without its `?`).
pub fn parse_with_query(text: &str) -> Result<(Url, Option<String>), Refusal> {
    let Some((base, query)) = text.split_once('?') else {
        return parse(text).map(|u| (u, None));
    };
    let url = parse(base)?;
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
                if hex.len() != 2 || !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err("the query has a '%' that is not a percent-escape like %2F");
                }
                i += 3;
            }
            b if query_char(b) => i += 1,
            _ => {
                return Err(
                    "the query holds a character other than letters, digits, -._~!$&'()*+,;=:/? and percent-escapes",
                );
            }
        }
    }
    Ok((url, Some(query.to_string())))
}

/// The characters a query may hold (RFC 3986 `query`, less `@` and `%`, which is checked apart).
fn query_char(b: u8) -> bool {
    path_char(b) || b"!$&'()*+,;=:?".contains(&b)
}

/// A URL as messages may show it: never its user information, query or fragment, which can
/// hold a password or a token. `https://u:p@h/x?t=1` → `https://(hidden)@h/x?(hidden)`.
///
/// A refused URL is malformed by definition, so its parts are guessed the way that hides more:
/// the user information runs to the LAST `@` (a password may hold `/`, `?`, `#`, `:` or `@`);
/// when a `?` or `#` comes before that `@`, the `@` may be the query's own and what follows it
/// part of a token, so everything after the scheme is hidden; an authority whose port is not a
/// number (`https://user:password`) is hidden too.
pub fn shown(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) if !s.is_empty() && s.bytes().all(scheme_char) => (format!("{s}://"), r),
        _ => (String::new(), text),
    };
    let cut = rest.find(['?', '#']);
    let at = rest.rfind('@');
    if let (Some(at), Some(cut)) = (at, cut)
        && cut < at
    {
        return format!("{scheme}(hidden)");
    }
    let visible = &rest[at.map_or(0, |a| a + 1)..cut.unwrap_or(rest.len())];
    let authority = &visible[..visible.find('/').unwrap_or(visible.len())];
    if !plain_port(authority) {
        return format!("{scheme}(hidden)");
    }
    let userinfo = if at.is_some() { "(hidden)@" } else { "" };
    let tail = if cut.is_some() { "?(hidden)" } else { "" };
    format!("{scheme}{userinfo}{visible}{tail}")
}

/// RFC 3986 scheme characters.
fn scheme_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

/// Whatever follows the host in `authority` is nothing or `:` and digits.
fn plain_port(authority: &str) -> bool {
    let after_host = match authority.strip_prefix('[') {
        Some(inside) => inside.split_once(']').map(|(_, after)| after),
        None => Some(authority.find(':').map_or("", |i| &authority[i..])),
    };
    after_host.is_some_and(|p| {
        p.is_empty()
            || p.strip_prefix(':')
                .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Is `host` (as [`Url::host`] holds it) a loopback address? Only IP literals count: the name
/// `localhost` goes through the resolver, which nothing guarantees to answer with loopback.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_urls_and_rebuilds_them() {
        let u = parse("HTTPS://My-Vault.Vault.Azure.NET:443/secrets/a").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.port, u.path.as_str()),
            ("https", "my-vault.vault.azure.net", Some(443), "/secrets/a")
        );
        assert_eq!(u.full(), "https://my-vault.vault.azure.net:443/secrets/a");
        assert_eq!(parse("http://[::1]:8080").unwrap().host, "[::1]");
        assert_eq!(
            parse("http://127.0.0.1").unwrap().origin(),
            "http://127.0.0.1"
        );
    }

    #[test]
    fn refuses_everything_that_could_split_host_from_connection() {
        for bad in [
            "https://evil.test?.vault.azure.net",
            "https://evil.test#.vault.azure.net",
            "https://user@v.vault.azure.net",
            "https://evil.test\\.vault.azure.net",
            "https://evil%2etest.vault.azure.net",
            "https://v.vault.azure.net /x",
            "https://v.vault.azure.net\n",
            "https://v.vault.azure.net.",
            "https://.vault.azure.net",
            "https://-a.vault.azure.net",
            "https://a_b.vault.azure.net",
            "https://v.vault.azure.net:0",
            "https://v.vault.azure.net:65536",
            "https://v.vault.azure.net:",
            "https://v.vault.azure.net:+443",
            "https://1.2.3.999",
            "https://0x7f.1",
            "https://[::1",
            "https://[::1]x",
            "https://[evil.test]",
            "https://",
            "ftp://v.vault.azure.net",
            "v.vault.azure.net",
            "https://vé.vault.azure.net",
            "https://v.vault.azure.net/a\"b",
            "https://v.vault.azure.net/a{b}",
            "https://v.vault.azure.net/a;b",
            "https://v.vault.azure.net/a|b",
            "https://v.vault.azure.net/a'b",
            "https://v.vault.azure.net/a:b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn host_names_are_at_most_253_characters() {
        let label = "a".repeat(63);
        let name = |len: usize| {
            let mut h = format!("{label}.{label}.{label}.{label}");
            h.truncate(len);
            h.trim_end_matches('.').to_string()
        };
        let at_most = name(253);
        assert_eq!(at_most.len(), 253);
        assert!(parse(&format!("https://{at_most}")).is_ok());
        for long in [
            format!("{at_most}a"),
            format!("{at_most}aaaaaaa"),
            format!("{}.b", name(253)),
        ] {
            assert!(long.len() > 253);
            assert!(parse(&format!("https://{long}")).is_err(), "{}", long.len());
        }
        assert!(parse("https://a.b/ok-path_1.2~x/y").is_ok());
    }

    #[test]
    fn a_query_only_where_asked_and_never_shown() {
        let (u, q) = parse_with_query("http://127.0.0.1:9/hook?token=a%2Fb&x=1").unwrap();
        assert_eq!(
            (u.full(), q.as_deref()),
            ("http://127.0.0.1:9/hook".into(), Some("token=a%2Fb&x=1"))
        );
        assert_eq!(parse_with_query("http://h/x").unwrap().1, None);
        for bad in [
            "http://h/x?a#b",
            "http://h/x?a b",
            "http://h/x?a@b",
            "http://h/x?a%2",
            "http://h/x?a%zz",
            "http://h/x?a\\b",
            "http://u@h/x?a",
            "http://h#x?a",
        ] {
            assert!(parse_with_query(bad).is_err(), "{bad:?} was accepted");
        }
        for (text, want) in [
            ("http://u:pw@h:1/x?t=s#f", "http://(hidden)@h:1/x?(hidden)"),
            ("http://h/x#pw", "http://h/x?(hidden)"),
            ("http://h/x", "http://h/x"),
            ("u:pw@h", "(hidden)@h"),
        ] {
            assert_eq!(shown(text), want, "{text}");
        }
    }

    /// The reviewer's cases: a password holding `/`, `?` or `#`, a query token, and a URL
    /// without a scheme; none of the secret part may be shown.
    #[test]
    fn passwords_with_delimiters_are_never_shown() {
        for (text, want) in [
            (
                "https://user:pa/ssw0rd@hooks.example.test/x",
                "https://(hidden)@hooks.example.test/x",
            ),
            (
                "https://user:pass?w0rd@hooks.example.test/x",
                "https://(hidden)",
            ),
            (
                "https://user:pass#w0rd@hooks.example.test/x",
                "https://(hidden)",
            ),
            (
                "https://u:s3cr/etpw@v.vault.azure.net",
                "https://(hidden)@v.vault.azure.net",
            ),
            (
                "http://user:Pa55word@127.0.0.1:1/msi/token?sig=TOPSECRETSIG",
                "http://(hidden)@127.0.0.1:1/msi/token?(hidden)",
            ),
            (
                "http://127.0.0.1:1/token?code=FUNCKEYSECRET",
                "http://127.0.0.1:1/token?(hidden)",
            ),
            ("http://h/x?t=tok@en.example", "http://(hidden)"),
            ("http://h/a@b", "http://(hidden)@b"),
            ("https://user:password", "https://(hidden)"),
            ("https://user:pass/word", "https://(hidden)"),
            ("http://[::1]:8080/x", "http://[::1]:8080/x"),
            ("http://[::1]x:y/x", "http://(hidden)"),
            ("user:pa://ss@h/x", "(hidden)@h/x"),
            (
                "db=https://u:p@h/secrets/db?json=/a",
                "(hidden)@h/secrets/db?(hidden)",
            ),
        ] {
            assert_eq!(shown(text), want, "{text}");
        }
    }

    /// A URL whose every secret part (password, query, fragment) is made of upper-case
    /// letters between any of the delimiters `/?#@:=&`, everything else lower-case.
    fn url_with_secrets() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let secret = || {
            proptest::collection::vec(("[A-Z]{0,6}", "[/?#@:=&%]"), 1..5).prop_map(|parts| {
                parts
                    .into_iter()
                    .map(|(word, delimiter)| format!("X{word}{delimiter}"))
                    .collect::<String>()
                    + "Y"
            })
        };
        (
            prop_oneof![Just(""), Just("https://"), Just("http://"), Just("https:/")],
            proptest::option::of(("[a-z]{0,5}", secret())),
            "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,3}(:[0-9]{1,5})?",
            "(/[a-z0-9._~-]{0,8}){0,3}",
            proptest::option::of(secret()),
            proptest::option::of(secret()),
        )
            .prop_map(|(scheme, userinfo, host, path, query, fragment)| {
                let userinfo = userinfo.map_or(String::new(), |(u, p)| format!("{u}:{p}@"));
                let query = query.map_or(String::new(), |q| format!("?{q}"));
                let fragment = fragment.map_or(String::new(), |f| format!("#{f}"));
                format!("{scheme}{userinfo}{host}{path}{query}{fragment}")
            })
    }

    proptest::proptest! {
        /// No piece of a password, query or fragment survives `shown`, whatever delimiters
        /// they hold: upper-case letters are only ever in those parts.
        #[test]
        fn shown_never_holds_a_piece_of_a_secret(text in url_with_secrets()) {
            let out = shown(&text);
            proptest::prop_assert!(
                !out.bytes().any(|b| b.is_ascii_uppercase()),
                "{text:?} is shown as {out:?}"
            );
        }
    }

    #[test]
    fn loopback() {
        for h in ["127.0.0.1", "127.8.9.1", "[::1]"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "localhost.evil.com",
            "10.0.0.1",
            "169.254.169.254",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}

//! `watch --serve`: the local secrets endpoint against the emulator. What is served is what the
//! files hold, only to a request with the token, never through a proxy, and unknown names cost
//! no Key Vault request; bad configuration is refused before the first fetch with its exit code.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

/// An answer: status, head (lower-cased), body.
struct Answer {
    code: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}: ", name.to_ascii_lowercase());
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::trim)
    }
}

/// Send `request` as is on a new connection and read until it closes.
fn send(addr: &str, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(ms(5000))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse(&out)
}

fn parse(out: &[u8]) -> Answer {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer {
        code,
        head,
        body: out[end..].to_vec(),
    }
}

/// `METHOD path` with the token (when given) and `extra` header lines, connection closed after.
fn ask(addr: &str, method: &str, path: &str, token: Option<&str>, extra: &str) -> Answer {
    let token = token.map_or(String::new(), |t| format!("X-Kvfetch-Token: {t}\r\n"));
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{token}{extra}Connection: close\r\n\r\n");
    send(addr, req.as_bytes())
}

/// The address the endpoint reports having bound.
fn serve_addr(w: &Background) -> String {
    let mut addr = String::new();
    w.wait("the secrets endpoint's address", ms(10_000), || {
        addr = w
            .stderr()
            .lines()
            .find_map(|l| {
                let rest = l.split("secrets endpoint listening").nth(1)?;
                rest.split_whitespace()
                    .find_map(|f| f.strip_prefix("addr="))
                    .map(str::to_string)
            })
            .unwrap_or_default();
        !addr.is_empty()
    });
    addr
}

/// `kvfetch watch` with `args`, serving on a free loopback port with its token in `s/token`.
fn watch_serving(emu: &Emulator, s: &Scratch, args: &[&str]) -> (Background, String) {
    let token = s.path("token");
    let mut argv = vec![
        "watch",
        "--serve",
        "127.0.0.1:0",
        "--serve-token-file",
        token.to_str().unwrap(),
        "--refresh",
        "1h",
    ];
    argv.extend(args);
    let w = Background::start(&env_for(emu), &argv);
    let addr = serve_addr(&w);
    (w, addr)
}

fn token(s: &Scratch) -> String {
    let mut t = String::new();
    wait_for("the token file", ms(10_000), || {
        t = read(&s.path("token"));
        !t.is_empty()
    });
    t
}

fn wait_served(w: &Background, addr: &str, token: &str, name: &str) -> Answer {
    let path = format!("/v1/secrets/{name}");
    let mut last = None;
    w.wait("a served value", ms(15_000), || {
        let a = ask(addr, "GET", &path, Some(token), "");
        let ok = a.code == 200;
        last = Some(a);
        ok
    });
    last.unwrap()
}

#[test]
fn serves_exactly_what_the_files_hold_and_nothing_else() {
    let emu = Emulator::start().unwrap();
    let v1 = emu.set_secret("db-password", "pw-one-6d2a");
    emu.set_secret("app-config", r#"{"user":"alice-7c1d","n":1}"#);
    let s = Scratch::new();
    let dir = s.path("out");
    let (mut w, addr) = watch_serving(
        &emu,
        &s,
        &[
            "--secret",
            "pw=db-password",
            "--secret",
            "user=app-config?json=/user",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    let t = token(&s);
    assert_eq!(t.len(), 64, "32 random bytes as hex");
    assert_eq!(mode(&s.path("token")), 0o400);
    let a = wait_served(&w, &addr, &t, "pw");
    assert_eq!(a.body, std::fs::read(dir.join("pw")).unwrap());
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));
    assert_eq!(a.header("etag"), Some(format!("\"{v1}\"").as_str()));
    assert_eq!(a.header("x-kvfetch-version"), Some(v1.as_str()));
    // After shapes: the JSON field, as in its file.
    let u = ask(&addr, "GET", "/v1/secrets/user", Some(&t), "");
    assert_eq!(u.body, b"alice-7c1d");
    assert_eq!(u.body, std::fs::read(dir.join("user")).unwrap());
    let j = ask(&addr, "GET", "/v1/secrets/pw?format=json", Some(&t), "");
    let v: serde_json::Value = serde_json::from_slice(&j.body).unwrap();
    assert_eq!(v["name"], "pw");
    assert_eq!(v["value"], "pw-one-6d2a");
    assert_eq!(v["version"], v1.as_str());
    assert!(
        v["updated"].is_u64() && v.get("contentType").is_some(),
        "{v}"
    );
    let h = ask(&addr, "HEAD", "/v1/secrets/pw", Some(&t), "");
    assert_eq!((h.code, h.body.len()), (200, 0));
    assert_eq!(h.header("content-length"), Some("11"));
    // Unknown names, the vault's own names behind an alias, and other paths: 404, no request.
    emu.reset_counters();
    for path in [
        "/v1/secrets/other",
        "/v1/secrets/db-password",
        "/v1/secrets/",
        "/",
    ] {
        assert_eq!(ask(&addr, "GET", path, Some(&t), "").code, 404, "{path}");
    }
    assert_eq!(emu.counters().kv_total_requests, 0);
    // A rotation is served once refreshed, as the file is.
    let v2 = emu.set_secret("db-password", "pw-two-81fe");
    w.signal(SIGHUP);
    w.wait("the rotated value", ms(10_000), || {
        ask(&addr, "GET", "/v1/secrets/pw", Some(&t), "").body == b"pw-two-81fe"
    });
    let a = ask(&addr, "GET", "/v1/secrets/pw", Some(&t), "");
    assert_eq!(a.header("x-kvfetch-version"), Some(v2.as_str()));
    assert_eq!(read(&dir.join("pw")), "pw-two-81fe");
    let log = w.stop_and_stderr();
    for secret in [&t, "pw-one-6d2a", "pw-two-81fe", "alice-7c1d"] {
        assert!(!log.contains(secret), "leaked into the log: {log}");
    }
}

#[test]
fn refuses_requests_without_the_token_through_a_proxy_or_not_get() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("api-key", "key-3b9f0c");
    let s = Scratch::new();
    // The token file is the operator's: read, never replaced; --serve alone is an output.
    std::fs::write(s.path("token"), "operator-chosen-token-42\n").unwrap();
    let (mut w, addr) = watch_serving(&emu, &s, &["--secret", "api-key"]);
    let t = "operator-chosen-token-42";
    wait_served(&w, &addr, t, "api-key");
    let path = "/v1/secrets/api-key";
    let cases: &[(&str, Option<&str>, &str, u16)] = &[
        ("GET", None, "", 401),
        ("GET", Some("operator-chosen-token-43"), "", 401),
        ("GET", Some("operator-chosen-token-42 "), "", 200), // header white space is not the value
        ("GET", Some(t), "X-Forwarded-For: 10.1.2.3\r\n", 400),
        ("GET", Some(t), "Forwarded: for=10.1.2.3\r\n", 400),
        ("POST", Some(t), "Content-Length: 0\r\n", 405),
        ("DELETE", Some(t), "", 405),
        ("GET", Some(t), "Content-Length: 5\r\n", 400),
    ];
    for (method, token, extra, code) in cases {
        let a = ask(&addr, method, path, *token, extra);
        assert_eq!(a.code, *code, "{method} {token:?} {extra:?}");
        // Each status with its own reason phrase (the head is read lower-cased).
        let reason = match code {
            200 => "ok",
            400 => "bad request",
            401 => "unauthorized",
            _ => "method not allowed",
        };
        assert!(
            a.head.starts_with(&format!("http/1.1 {code} {reason}\r\n")),
            "{}",
            a.head
        );
        if *code != 200 {
            assert!(
                !a.body.windows(6).any(|w| w == b"key-3b"),
                "a refusal held the value"
            );
        }
    }
    // A head larger than the bound is refused, not read on.
    let big = format!("GET {path} HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(send(&addr, big.as_bytes()).code, 431);
    // Keep-alive: two requests on one connection, both answered.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(ms(5000))).unwrap();
    let one = format!("GET {path} HTTP/1.1\r\nX-Kvfetch-Token: {t}\r\n\r\n");
    let close = format!("GET {path} HTTP/1.1\r\nX-Kvfetch-Token: {t}\r\nConnection: close\r\n\r\n");
    c.write_all(format!("{one}{close}").as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let log = w.stop_and_stderr();
    assert!(!log.contains(t) && !log.contains("key-3b9f0c"), "{log}");
    // The operator's file is as it was.
    assert_eq!(read(&s.path("token")), "operator-chosen-token-42\n");
}

#[test]
fn answers_503_until_the_first_fetch_has_completed() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("slow", "slow-value-5e0a");
    emu.set_kv_delay(ms(1500));
    let s = Scratch::new();
    let (w, addr) = watch_serving(&emu, &s, &["--secret", "slow"]);
    let t = token(&s);
    let early = ask(&addr, "GET", "/v1/secrets/slow", Some(&t), "");
    assert_eq!(early.code, 503, "{}", String::from_utf8_lossy(&early.body));
    assert!(!early.body.windows(4).any(|w| w == b"slow-v"));
    let a = wait_served(&w, &addr, &t, "slow");
    assert_eq!(a.body, b"slow-value-5e0a");
}

#[test]
fn connections_past_the_limit_get_429_and_silent_ones_are_closed() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("k", "v-19ab");
    let s = Scratch::new();
    let (w, addr) = watch_serving(&emu, &s, &["--secret", "k"]);
    let t = token(&s);
    wait_served(&w, &addr, &t, "k");
    // 128 connections that say nothing hold every place.
    let idle: Vec<TcpStream> = (0..128)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut busy = None;
    w.wait("a 429", ms(5000), || {
        let a = ask(&addr, "GET", "/v1/secrets/k", Some(&t), "");
        let got = a.code == 429;
        busy = Some(a);
        got
    });
    assert!(busy.unwrap().body.starts_with(b"too many connections"));
    // They are closed within the header time (2 s), and the endpoint serves again.
    let start = std::time::Instant::now();
    w.wait("a place again", ms(8000), || {
        ask(&addr, "GET", "/v1/secrets/k", Some(&t), "").code == 200
    });
    assert!(start.elapsed() < ms(2000 + 5000));
    drop(idle);
}

#[test]
fn bad_configuration_is_refused_before_any_request() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("k", "v-7f00");
    let s = Scratch::new();
    let token = s.path("token");
    let tf = token.to_str().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    std::fs::create_dir(s.path("a-dir")).unwrap();
    std::fs::write(s.path("short"), "tiny-token-1\n").unwrap();
    let watch = |extra: &[&str]| {
        let mut a = vec!["watch", "--secret", "k", "--refresh", "1h"];
        a.extend(extra);
        run(&emu, &a)
    };
    let nowhere = s.path("no/such/dir/token");
    let (a_dir, short) = (s.path("a-dir"), s.path("short"));
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--serve", "0.0.0.0:0", "--serve-token-file", tf],
            2,
            "not a loopback address",
        ),
        (
            vec!["--serve", "8090", "--serve-token-file", tf],
            2,
            "not an address and port",
        ),
        (
            vec!["--serve", "127.0.0.1:0"],
            2,
            "needs --serve-token-file",
        ),
        (
            vec!["--serve-token-file", tf, "--dir", tf],
            2,
            "need --serve ADDR",
        ),
        (
            vec!["--serve", &taken, "--serve-token-file", tf],
            2,
            "cannot listen on --serve",
        ),
        (
            vec![
                "--serve",
                "127.0.0.1:0",
                "--serve-token-file",
                a_dir.to_str().unwrap(),
            ],
            2,
            "cannot read --serve-token-file",
        ),
        (
            vec![
                "--serve",
                "127.0.0.1:0",
                "--serve-token-file",
                short.to_str().unwrap(),
            ],
            2,
            "holds no usable token",
        ),
        (
            vec![
                "--serve",
                "127.0.0.1:0",
                "--serve-token-file",
                nowhere.to_str().unwrap(),
            ],
            6,
            "",
        ),
    ];
    for (extra, code, says) in &cases {
        let r = watch(extra);
        assert_eq!(r.code, *code, "{extra:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{extra:?}: {}", r.stderr);
        assert!(!r.stderr.contains("tiny-token-1"), "{}", r.stderr);
    }
    assert_eq!(emu.counters().kv_total_requests, 0, "no request was made");
    assert!(!token.exists(), "a refused start leaves no token file");
    // Only watch serves: exec and fetch refuse the flag; a shared variable is left to watch.
    let r = run(
        &emu,
        &[
            "exec",
            "--refresh",
            "1h",
            "--secret",
            "k",
            "--serve",
            "127.0.0.1:0",
            "--",
            "true",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--serve does not apply to `kvfetch exec`"),
        "{}",
        r.stderr
    );
    let mut env = env_for(&emu);
    env.insert("KVFETCH_SERVE".into(), "127.0.0.1:0".into());
    let out = s.path("out");
    let r = run_with(
        &env,
        &["fetch", "--secret", "k", "--dir", out.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!token.exists());
}

#[test]
fn a_token_file_that_is_another_output_is_refused() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", "pw-5c3d");
    let s = Scratch::new();
    let dir = s.path("out");
    std::fs::create_dir(&dir).unwrap();
    let env_file = s.path("app.env");
    let cases: Vec<(Vec<String>, std::path::PathBuf)> = vec![
        (
            vec!["--dir".into(), dir.display().to_string()],
            dir.join("pw"),
        ),
        (
            vec!["--env-file".into(), env_file.display().to_string()],
            env_file.clone(),
        ),
    ];
    for (outputs, token) in &cases {
        let mut args = vec![
            "watch",
            "--secret",
            "pw=db-password",
            "--refresh",
            "1h",
            "--serve",
            "127.0.0.1:0",
            "--serve-token-file",
            token.to_str().unwrap(),
        ];
        args.extend(outputs.iter().map(String::as_str));
        let mut w = Background::start(&env_for(&emu), &args);
        let code = w.exit_within(ms(10_000));
        let log = w.stop_and_stderr();
        assert_eq!(code, Some(2), "{args:?}: {log}");
        assert!(log.contains("--serve-token-file"), "{log}");
        assert!(!token.exists(), "{token:?} was written");
    }
    assert_eq!(emu.counters().kv_total_requests, 0);
}

#[test]
fn a_selection_is_served_under_the_names_it_gives() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("app-db", "db-value-2b7e");
    emu.set_secret("other-db", "not-chosen-9c1d");
    let s = Scratch::new();
    // A selection needs a --dir or --env-file (plan's rule); the endpoint serves its names.
    let dir = s.path("out");
    let (mut w, addr) = watch_serving(
        &emu,
        &s,
        &["--prefix", "app-", "--dir", dir.to_str().unwrap()],
    );
    let t = token(&s);
    assert_eq!(wait_served(&w, &addr, &t, "db").body, b"db-value-2b7e");
    for name in ["app-db", "other-db"] {
        let a = ask(&addr, "GET", &format!("/v1/secrets/{name}"), Some(&t), "");
        assert_eq!(a.code, 404, "{name}");
    }
    let log = w.stop_and_stderr();
    assert!(!log.contains("db-value-2b7e") && !log.contains(&t), "{log}");
}

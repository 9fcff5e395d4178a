//! `kvfetch watch`, the sidecar: real processes against the emulator with short intervals.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::*;

/// Start `kvfetch watch ARGS` against `emu`.
fn watch(emu: &Emulator, args: &[&str]) -> Background {
    watch_with(&env_for(emu), args)
}

fn watch_with(env: &std::collections::HashMap<String, String>, args: &[&str]) -> Background {
    let mut all = vec!["watch"];
    all.extend(args);
    Background::start(env, &all)
}

#[test]
fn rotation_replaces_only_the_changed_file() {
    let emu = Emulator::start().unwrap();
    let v1 = emu.set_secret("stable", "same");
    let r1 = emu.set_secret("rotating", "one");
    let s = Scratch::new();
    let (dir, ready, env_file) = (s.path("out"), s.path("ready"), s.path("app.env"));
    let mut w = watch(
        &emu,
        &[
            "--secret",
            "stable",
            "--secret",
            "rotating",
            "--dir",
            dir.to_str().unwrap(),
            "--env-file",
            env_file.to_str().unwrap(),
            "--refresh",
            "150ms",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    wait_for("the ready file", ms(5000), || ready.exists());
    let before = std::fs::metadata(dir.join("stable")).unwrap();
    let rotating_inode = std::fs::metadata(dir.join("rotating")).unwrap().ino();
    std::thread::sleep(ms(400)); // a few unchanged refreshes
    let r2 = emu.set_secret("rotating", "two");
    wait_for("the rotated value", ms(3000), || {
        read(&dir.join("rotating")) == "two"
    });
    wait_for("the env file", ms(1000), || {
        read(&env_file).contains("ROTATING='two'")
    });
    let after = std::fs::metadata(dir.join("stable")).unwrap();
    assert_eq!(
        (before.ino(), before.mtime_nsec(), before.mtime()),
        (after.ino(), after.mtime_nsec(), after.mtime()),
        "unchanged file untouched"
    );
    assert_ne!(
        std::fs::metadata(dir.join("rotating")).unwrap().ino(),
        rotating_inode,
        "changed file replaced atomically"
    );
    assert_eq!(
        s.entries("out"),
        vec!["rotating", "stable"],
        "no temp file left"
    );
    let log = w.stop_and_stderr();
    assert!(
        log.contains("secret changed") && log.contains(&r1) && log.contains(&r2),
        "{log}"
    );
    assert!(!log.contains("two") || !log.contains("ROTATING='two'"));
    let _ = v1;
}

#[test]
fn failures_keep_the_last_good_files_and_show_in_metrics_and_readyz() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "alpha");
    emu.set_secret("b", "beta");
    let s = Scratch::new();
    let dir = s.path("out");
    let mut w = watch(
        &emu,
        &[
            "--secret",
            "a",
            "--secret",
            "b",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "100ms",
            "--health-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = w.health_addr();
    wait_ready(&addr);
    emu.set_enabled("a", false);
    emu.delete_secret("b");
    wait_for("failures in /metrics", ms(5000), || {
        metric(&addr, "kvfetch_refresh_failures_total{kind=\"not_found\"}") >= 2.0
    });
    assert_eq!(
        (read(&dir.join("a")), read(&dir.join("b"))),
        ("alpha".to_string(), "beta".to_string())
    );
    assert_eq!(
        http_get(&addr, "/readyz").0,
        200,
        "without --max-stale the last good secrets are served"
    );
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(metric(&addr, "kvfetch_refreshes_total"), 1.0);
    assert_eq!(metric(&addr, "kvfetch_ready"), 1.0);
    assert!(metric(&addr, "kvfetch_seconds_since_last_success") >= 0.0);
    // Prometheus' text format, by its version; the probes are plain text.
    assert_eq!(
        http_content_type(&addr, "/metrics"),
        "text/plain; version=0.0.4"
    );
    assert_eq!(http_content_type(&addr, "/readyz"), "text/plain");
    let metrics = http_get(&addr, "/metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l == "# TYPE kvfetch_secret_changes_total counter"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("alpha") && !metrics.contains("beta"),
        "never a value"
    );
}

#[test]
fn max_stale_fails_readyz_then_exits_7() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "alpha");
    let s = Scratch::new();
    let dir = s.path("out");
    let mut env = env_for(&emu);
    env.insert("KVFETCH_TIMEOUT".into(), "200ms".into());
    // Refreshes 0.9 to 1.1 s apart, and a failed one retried after exactly 1 s (a 2 s backoff
    // capped at --refresh): the first failure comes before 1.2 s of staleness, the one that ends
    // the process at least 0.7 s after /readyz starts failing, a window no probe misses.
    env.insert("KVFETCH_BACKOFF_BASE".into(), "2s".into());
    let mut w = watch_with(
        &env,
        &[
            "--secret",
            "a",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "1s",
            "--health-listen",
            "127.0.0.1:0",
            "--max-stale",
            "1200ms",
        ],
    );
    let addr = w.health_addr();
    wait_ready(&addr);
    for _ in 0..10_000 {
        emu.push_kv_fault(Fault::Status(503));
    }
    wait_for("/readyz to fail", ms(5000), || {
        http_get(&addr, "/readyz").0 == 503
    });
    assert_eq!(w.exit_within(ms(5000)), Some(7));
    assert_eq!(read(&dir.join("a")), "alpha", "the last good file stays");
    assert!(w.stop_and_stderr().contains("--max-stale"));
}

#[test]
fn token_is_requested_once_with_a_long_lifetime_and_again_when_short() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "alpha");
    let s = Scratch::new();
    let dir = s.path("out");
    let w = watch(
        &emu,
        &[
            "--secret",
            "a",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "50ms",
        ],
    );
    wait_for("many refreshes", ms(5000), || {
        emu.counters().kv_total_requests >= 15
    });
    assert_eq!(emu.counters().imds_token_requests, 1);
    drop(w);

    emu.set_token_lifetime(Duration::from_secs(2));
    emu.reset_counters();
    let _w = watch(
        &emu,
        &[
            "--secret",
            "a",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "50ms",
        ],
    );
    // One snapshot per check: the two counters move at different moments.
    wait_for("a renewed token used for a fetch", ms(8000), || {
        let c = emu.counters();
        c.imds_token_requests >= 2 && c.kv_total_requests >= 2
    });
}

#[test]
fn sighup_refreshes_now() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "one");
    let s = Scratch::new();
    let (dir, ready) = (s.path("out"), s.path("ready"));
    let w = watch(
        &emu,
        &[
            "--secret",
            "a",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "1h",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    wait_for("the ready file", ms(5000), || ready.exists());
    emu.set_secret("a", "two");
    w.signal(SIGHUP);
    wait_for("the refresh SIGHUP asked for", ms(2000), || {
        read(&dir.join("a")) == "two"
    });
}

#[test]
fn sigterm_exits_0_within_a_second_even_mid_request_and_keeps_files() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "alpha");
    let s = Scratch::new();
    let (dir, ready) = (s.path("out"), s.path("ready"));
    let mut w = watch(
        &emu,
        &[
            "--secret",
            "a",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "100ms",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    wait_for("the ready file", ms(5000), || ready.exists());
    emu.set_kv_delay(Duration::from_secs(5));
    std::thread::sleep(ms(300)); // a refresh is now waiting on the slow vault
    let started = Instant::now();
    w.signal(SIGTERM);
    assert_eq!(w.exit_within(ms(1000)), Some(0));
    assert!(started.elapsed() < ms(1000));
    assert!(!ready.exists(), "the ready file is removed on exit");
    assert_eq!(
        read(&dir.join("a")),
        "alpha",
        "without --cleanup the files stay"
    );
    assert_eq!(s.entries("out"), vec!["a"]);
}

#[test]
fn cleanup_removes_what_kvfetch_wrote() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "alpha");
    let s = Scratch::new();
    let (dir, ready, env_file) = (s.path("out"), s.path("ready"), s.path("app.env"));
    let mut w = watch(
        &emu,
        &[
            "--secret",
            "a",
            "--dir",
            dir.to_str().unwrap(),
            "--env-file",
            env_file.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
            "--cleanup",
        ],
    );
    wait_for("the ready file", ms(5000), || ready.exists());
    w.signal(SIGINT);
    assert_eq!(w.exit_within(ms(1000)), Some(0));
    assert!(s.entries("").is_empty(), "{:?}", s.entries(""));
}

#[test]
fn notify_posts_names_only_and_retries_with_the_next_change() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "alpha");
    emu.set_secret("b", "beta");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/reload", listener.local_addr().unwrap());
    let s = Scratch::new();
    let (dir, ready) = (s.path("out"), s.path("ready"));
    let _w = watch(
        &emu,
        &[
            "--secret",
            "a",
            "--secret",
            "b",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "100ms",
            "--ready-file",
            ready.to_str().unwrap(),
            "--notify-url",
            &url,
        ],
    );
    wait_for("the ready file", ms(5000), || ready.exists());
    emu.set_secret("b", "new beta");
    let first = accept_post(
        &listener,
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(first.starts_with("POST /reload"), "{first}");
    assert!(first.ends_with(r#"{"changed":["b"]}"#), "{first}");
    assert!(!first.contains("beta"), "names only");
    let agent = format!("user-agent: kvfetch/{}\r\n", env!("CARGO_PKG_VERSION"));
    assert!(first.to_ascii_lowercase().contains(&agent), "{first}");
    // Token and vault requests say the same.
    assert_eq!(
        emu.counters().user_agents.into_iter().collect::<Vec<_>>(),
        [format!("kvfetch/{}", env!("CARGO_PKG_VERSION"))]
    );
    // The failed notification is retried with the next change.
    emu.set_secret("a", "new alpha");
    let second = accept_post(&listener, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(second.ends_with(r#"{"changed":["a","b"]}"#), "{second}");
}

#[test]
fn first_fetch_failure_exits_like_fetch() {
    let emu = Emulator::start().unwrap();
    let s = Scratch::new();
    let (dir, ready) = (s.path("out"), s.path("ready"));
    let mut w = watch(
        &emu,
        &[
            "--secret",
            "missing",
            "--dir",
            dir.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    assert_eq!(w.exit_within(ms(5000)), Some(5));
    assert!(!ready.exists());
}

#[test]
fn watch_only_flags_are_refused_elsewhere() {
    let emu = Emulator::start().unwrap();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "a",
            "--dir",
            "/dev/shm/x",
            "--refresh",
            "1m",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("--refresh does not apply to `kvfetch fetch`"),
        "{}",
        r.stderr
    );
    let r = run(&emu, &["watch", "--help"]);
    assert!(
        r.stdout.contains("--health-listen")
            && r.stdout.contains("KVFETCH_REFRESH")
            && r.stdout.contains("[default: 5m]")
    );
}

#[test]
fn a_failed_token_renewal_keeps_the_still_valid_token() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "alpha");
    emu.set_token_lifetime(Duration::from_secs(10)); // renewed from ~5 s on, valid until ~10 s
    let s = Scratch::new();
    let dir = s.path("out");
    let mut env = env_for(&emu);
    env.insert("KVFETCH_TIMEOUT".into(), "300ms".into());
    let mut w = watch_with(
        &env,
        &[
            "--secret",
            "a",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "200ms",
            "--health-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = w.health_addr();
    wait_ready(&addr);
    for _ in 0..10_000 {
        emu.push_imds_fault(Fault::Status(500));
    }
    wait_for("a failed renewal", ms(8000), || {
        emu.counters().imds_token_requests >= 3
    });
    std::thread::sleep(ms(500));
    assert_eq!(
        metric(&addr, "kvfetch_refresh_failures_total{kind=\"no_token\"}"),
        0.0,
        "a failed renewal while the token is valid is no failed refresh"
    );
    // Once it has expired, the old token is no longer sent: refreshes fail for want of one.
    let no_token = || metric(&addr, "kvfetch_refresh_failures_total{kind=\"no_token\"}");
    wait_for("a refresh failed for want of a token", ms(12_000), || {
        no_token() >= 1.0
    });
    // The vault judges expiry by whole seconds, so for up to a second it refuses a token kvfetch
    // still holds valid (each such refresh is a 401 and a failed renewal); past that second the
    // token is expired for both.
    std::thread::sleep(ms(1500));
    let (failed, sent) = (no_token(), emu.counters().kv_total_requests);
    wait_for("two more failed refreshes", ms(8000), || {
        no_token() >= failed + 2.0
    });
    assert_eq!(
        emu.counters().kv_total_requests,
        sent,
        "no vault request (GET or list) with an expired token"
    );
    assert!(
        w.stop_and_stderr()
            .contains("token renewal failed; the current token is still valid")
    );
}

/// A kept-alive connection the vault closed while idle is not reused: the next refresh opens a
/// new one at once, with no failed request and no retry; that one is kept alive and reused.
#[test]
fn a_connection_the_vault_closed_while_idle_is_not_reused() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("one", "v");
    // The first answer comes whole (no `Connection: close`), then the vault closes.
    emu.push_kv_fault(Fault::AnswerThenClose);
    let s = Scratch::new();
    let (dir, ready) = (s.path("out"), s.path("ready"));
    let w = watch(
        &emu,
        &[
            "-v",
            "--secret",
            "one",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "1h",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    wait_for("the ready file", ms(5000), || ready.exists());
    // The closed connection's thread has ended (at most the identity connection stays open).
    wait_for("the vault's close", ms(5000), || {
        emu.open_connections() <= 1
    });
    for refresh in 1..=2 {
        let before = emu.counters().kv_total_requests;
        w.signal(SIGHUP);
        wait_for("the refresh SIGHUP asked for", ms(5000), || {
            emu.counters().kv_total_requests > before
        });
        std::thread::sleep(ms(300)); // the refresh's other requests, if any
        assert_eq!(emu.counters().kv_connections, 2, "refresh {refresh}");
    }
    let mut w = w;
    let log = w.stop_and_stderr();
    assert!(
        !log.contains("retrying") && !log.contains("kvfetch: warn:"),
        "a closed connection was reused: {log}"
    );
    assert_eq!(read(&dir.join("one")), "v");
}

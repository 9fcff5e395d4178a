//! Fleet cost: refreshes that list instead of reading every secret, the fallback without the
//! list permission, a 429 pausing the whole client, and `--start-splay`.

mod common;

use std::time::Instant;

use common::*;

/// Start `kvfetch watch` over secrets s0..s{n-1} with `extra` flags; returns it, the health
/// address and the scratch directory.
fn watch_many(emu: &Emulator, n: usize, extra: &[&str]) -> (Background, String, Scratch) {
    for i in 0..n {
        emu.set_secret(&format!("s{i}"), &format!("value-{i}-4e1f"));
    }
    let s = Scratch::new();
    let dir = s.path("out");
    let mut args: Vec<String> = vec!["watch".into()];
    for i in 0..n {
        args.extend(["--secret".into(), format!("s{i}")]);
    }
    args.extend(
        [
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "100ms",
            "--health-listen",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut w = Background::start(&env_for(emu), &argv);
    let addr = w.health_addr();
    wait_ready(&addr);
    (w, addr, s)
}

/// Wait until `more` refreshes have completed after now.
fn refreshes(w: &Background, addr: &str, more: f64) {
    let start = metric(addr, "kvfetch_refreshes_total");
    w.wait("refreshes", ms(10_000), || {
        metric(addr, "kvfetch_refreshes_total") >= start + more
    });
}

/// Values fetched in the very second they were written are read once more (the list's
/// `updated` has one-second resolution): wait until a refresh reads none.
fn settle(w: &Background, addr: &str, emu: &Emulator) {
    std::thread::sleep(ms(1100));
    refreshes(w, addr, 2.0);
    emu.reset_counters();
}

#[test]
fn an_unchanged_refresh_lists_and_reads_only_what_changed() {
    let emu = Emulator::start().unwrap();
    let (mut w, addr, s) = watch_many(&emu, 50, &[]);
    settle(&w, &addr, &emu);
    refreshes(&w, &addr, 3.0);
    let c = emu.counters();
    // 50 secrets: two pages per refresh, no GET.
    assert!(c.kv_list_requests >= 6, "{c:?}");
    assert_eq!(c.kv_list_requests % 2, 0, "{c:?}");
    assert_eq!(c.kv_total_requests, c.kv_list_requests, "no GET: {c:?}");
    // A rotation is read, and only it.
    emu.set_secret("s7", "rotated-9a0b");
    w.wait("the rotation", ms(5000), || {
        read(&s.path("out/s7")) == "rotated-9a0b"
    });
    let got = emu.counters().kv_requests;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got.get("s7").is_some_and(|n| *n >= 1), "{got:?}");
    let lists = metric(
        &addr,
        &format!(
            "kvfetch_requests_total{{vault=\"{}\",kind=\"list\"}}",
            emu.vault_url()
        ),
    );
    let gets = metric(
        &addr,
        &format!(
            "kvfetch_requests_total{{vault=\"{}\",kind=\"get\"}}",
            emu.vault_url()
        ),
    );
    assert!(lists >= 8.0 && gets >= 51.0, "{lists} {gets}");
    let _ = w.stop_and_stderr();
}

#[test]
fn without_the_list_permission_every_refresh_reads_each_secret() {
    let emu = Emulator::start().unwrap();
    emu.set_list_denied(true);
    let (mut w, addr, _s) = watch_many(&emu, 5, &[]);
    refreshes(&w, &addr, 1.0); // the first refresh asks for the list
    emu.reset_counters();
    refreshes(&w, &addr, 3.0);
    let c = emu.counters();
    assert_eq!(
        c.kv_list_requests, 0,
        "asked once, at the first refresh: {c:?}"
    );
    assert!(c.kv_requests.values().all(|n| *n >= 3), "{c:?}");
    let log = w.stop_and_stderr();
    assert_eq!(log.matches("refuses to list secrets").count(), 1, "{log}");
}

#[test]
fn pinned_versions_are_never_read_again_until_a_full_read() {
    let emu = Emulator::start().unwrap();
    let v = emu.set_secret("pinned", "pinned-value-1c");
    let pinned = format!("pinned/{v}");
    let (mut w, addr, _s) = watch_many(&emu, 1, &["--secret", &pinned, "--full-read-every", "6s"]);
    settle(&w, &addr, &emu);
    refreshes(&w, &addr, 3.0);
    assert_eq!(emu.counters().kv_requests.get("pinned"), None);
    // The full read comes within --full-read-every; its GETs run in parallel, so wait for both
    // (reading the counters between the two answers saw one of them only).
    w.wait("a full read", ms(10_000), || {
        let c = emu.counters();
        c.kv_requests.contains_key("pinned") && c.kv_requests.contains_key("s0")
    });
    let c = emu.counters();
    assert_eq!(
        c.kv_requests.get("s0"),
        c.kv_requests.get("pinned"),
        "{c:?}"
    );
    let _ = w.stop_and_stderr();
}

#[test]
fn a_429_pauses_every_worker_of_that_vault() {
    let emu = Emulator::start().unwrap();
    for i in 0..16 {
        emu.set_secret(&format!("p{i}"), "v");
    }
    emu.set_kv_delay(ms(20));
    emu.push_kv_fault(Fault::StatusRetryAfter(429, 1));
    let s = Scratch::new();
    let dir = s.path("out");
    let mut args = vec![
        "fetch",
        "--concurrency",
        "4",
        "--dir",
        dir.to_str().unwrap(),
    ];
    let names: Vec<String> = (0..16).map(|i| format!("p{i}")).collect();
    for n in &names {
        args.extend(["--secret", n]);
    }
    let started = Instant::now();
    let mut f = Background::start(&env_for(&emu), &args);
    std::thread::sleep(ms(600));
    let early = emu.counters().kv_total_requests;
    assert_eq!(f.exit_within(ms(10_000)), Some(0), "{}", f.stderr());
    assert!(started.elapsed() >= ms(1000));
    // Before the pause ends, only the requests already in flight (and one each that had
    // passed the gate) went out: never all 16, as workers ignoring the 429 would send.
    assert!(early <= 8, "{early} requests during the pause");
    assert_eq!(emu.counters().kv_total_requests, 17);
}

#[test]
fn start_splay_waits_a_random_time_before_the_first_fetch() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "v");
    let s = Scratch::new();
    let dir = s.path("out");
    let d = dir.to_str().unwrap();
    let started = Instant::now();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "a",
            "--dir",
            d,
            "--start-splay",
            "400ms",
        ],
    );
    let elapsed = started.elapsed();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("--start-splay"))
        .unwrap();
    let wait = line
        .split("wait=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let wait = humantime_ms(wait);
    assert!(
        wait <= 400 && elapsed.as_millis() as u64 >= wait,
        "{line} {elapsed:?}"
    );
    // None by default.
    let r = run(&emu, &["fetch", "--secret", "a", "--dir", d]);
    assert!(!r.stderr.contains("--start-splay"), "{}", r.stderr);
    let r = run(
        &emu,
        &["fetch", "--secret", "a", "--dir", d, "--start-splay", "2h"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
}

/// `123ms`, `1s 5ms`, `0ns` → milliseconds (rounded down).
fn humantime_ms(text: &str) -> u64 {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap();
    match &text[digits.len()..] {
        "ms" => n,
        "s" => n * 1000,
        "us" | "µs" | "ns" => 0,
        other => panic!("unit {other}"),
    }
}

#[test]
fn throttled_answers_are_counted_by_vault() {
    let emu = Emulator::start().unwrap();
    let (mut w, addr, _s) = watch_many(&emu, 2, &[]);
    emu.push_kv_fault(Fault::StatusRetryAfter(429, 1));
    let series = format!("kvfetch_throttled_total{{vault=\"{}\"}}", emu.vault_url());
    w.wait("the 429 counted", ms(10_000), || {
        http_get(&addr, "/metrics")
            .1
            .lines()
            .any(|l| l == format!("{series} 1"))
    });
    let _ = w.stop_and_stderr();
}

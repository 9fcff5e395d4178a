//! The `--serve` benchmark (`bench/run serve`): a loopback load generator against
//! `kvfetch watch --serve` and, side by side in the same run, against a minimal Rust HTTP server
//! that answers a constant of the same size (the floor: what any server costs here).
//!
//! N keep-alive connections, each on its own thread, send a fixed number of requests one after
//! another; every request's latency goes into one list, from which p50/p99/p99.9/max and the
//! request rate are read. kvfetch's RSS is read from /proc after each round (flat = no growth
//! with requests). Everything is on loopback: kvfetch fetches from the in-process emulator.
//!
//! `serve_bench --kvfetch PATH [--connections N] [--requests PER_CONNECTION] [--rounds R]`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvfetch_emulator::Emulator;

const VALUE: &str = "bench-value-0123456789abcdef0123456789abcdef0123456789abcdef012";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--constant") {
        constant_server();
        return;
    }
    let opt = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let kvfetch = opt("--kvfetch", "target/release/kvfetch");
    let connections: usize = opt("--connections", "4").parse().expect("--connections N");
    let requests: usize = opt("--requests", "25000").parse().expect("--requests N");
    let rounds: usize = opt("--rounds", "3").parse().expect("--rounds N");

    let emu = Emulator::start().expect("start the emulator");
    emu.set_secret("db-password", VALUE);
    let dir = std::env::temp_dir().join(format!("kvfetch-serve-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    let (mut kv, kv_addr) = start_kvfetch(&kvfetch, &emu, &token_file);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let mut constant = Command::new(std::env::current_exe().unwrap())
        .arg("--constant")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(constant.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let const_addr = line.trim().to_string();

    println!(
        "serve benchmark: {connections} keep-alive connections x {requests} requests, {rounds} rounds, value {} bytes",
        VALUE.len()
    );
    println!(
        "{:<6} {:<9} {:>9} {:>8} {:>8} {:>9} {:>8} {:>10}",
        "round", "server", "req/s", "p50 us", "p99 us", "p99.9 us", "max us", "RSS KiB"
    );
    let path = "/v1/secrets/db-password";
    load(&kv_addr, &token, path, connections, 1000); // warm-up
    let rss_start = rss(kv.id());
    for round in 1..=rounds {
        for (name, addr, pid) in [
            ("kvfetch", &kv_addr, kv.id()),
            ("constant", &const_addr, constant.id()),
        ] {
            let s = load(addr, &token, path, connections, requests);
            println!(
                "{round:<6} {name:<9} {:>9.0} {:>8.0} {:>8.0} {:>9.0} {:>8.0} {:>10}",
                s.rps,
                s.p50,
                s.p99,
                s.p999,
                s.max,
                rss(pid)
            );
        }
    }
    println!(
        "kvfetch RSS: {} KiB after the warm-up, {} KiB after {} requests",
        rss_start,
        rss(kv.id()),
        rounds * connections * requests
    );
    let _ = kv.kill();
    let _ = constant.kill();
    let _ = kv.wait();
    let _ = constant.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kvfetch watch --serve 127.0.0.1:0` over the emulator; returns it and the address it bound,
/// once it serves the value.
fn start_kvfetch(
    bin: &str,
    emu: &Emulator,
    token_file: &std::path::Path,
) -> (std::process::Child, String) {
    let mut child = Command::new(bin)
        .args(["watch", "--secret", "db-password", "--refresh", "1h"])
        .args(["--serve", "127.0.0.1:0", "--serve-token-file"])
        .arg(token_file)
        .env_clear()
        .envs(emu.env())
        // Entra ID too points at the emulator: nothing may leave loopback.
        .env("AZURE_AUTHORITY_HOST", emu.authority_url())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kvfetch (build it first: cargo build --release)");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr = String::new();
    let mut line = String::new();
    while addr.is_empty() && stderr.read_line(&mut line).unwrap_or(0) > 0 {
        if let Some(rest) = line.split("secrets endpoint listening").nth(1) {
            addr = rest
                .split_whitespace()
                .find_map(|f| f.strip_prefix("addr="))
                .unwrap_or_default()
                .to_string();
        }
        line.clear();
    }
    assert!(!addr.is_empty(), "kvfetch did not start serving");
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let token = loop {
        if let Ok(t) = std::fs::read_to_string(token_file) {
            break t;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = Client::connect(&addr, &token, "/v1/secrets/db-password");
        if c.get() == 200 {
            break;
        }
        assert!(Instant::now() < until, "kvfetch never served the value");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, addr)
}

/// One keep-alive connection sending the same request.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    request: Vec<u8>,
    body: Vec<u8>,
}

impl Client {
    fn connect(addr: &str, token: &str, path: &str) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            request: format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Kvfetch-Token: {token}\r\n\r\n")
                .into_bytes(),
            body: Vec::new(),
        }
    }

    /// One request and its whole answer; returns the status.
    fn get(&mut self) -> u16 {
        self.writer.write_all(&self.request).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        self.body.resize(length, 0);
        self.reader.read_exact(&mut self.body).unwrap();
        code
    }
}

struct Stats {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// `connections` threads, `requests` each; every answer must be 200.
fn load(addr: &str, token: &str, path: &str, connections: usize, requests: usize) -> Stats {
    let start = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let mut c = Client::connect(addr, token, path);
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(requests);
                for _ in 0..requests {
                    let t = Instant::now();
                    assert_eq!(c.get(), 200);
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)] as f64 / 1000.0;
    Stats {
        rps: all.len() as f64 / elapsed,
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: *all.last().unwrap() as f64 / 1000.0,
    }
}

/// VmRSS of `pid`, KiB.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The floor: a minimal keep-alive HTTP/1.1 server, a thread per connection, answering every
/// request head with the same value. Prints its address, then serves until killed.
fn constant_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n{VALUE}",
        VALUE.len()
    );
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let answer = answer.clone();
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    if conn.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
    }
}

//! What an app does to read a secret from `kvfetch watch --serve` (std only, no HTTP crate):
//! read the token file kvfetch created, ask `GET /v1/secrets/NAME` with `X-Kvfetch-Token`, use
//! the body. Ask again whenever the value is needed: the sidecar answers from memory, so a
//! rotated value arrives with no file watching and no restart. `ETag` with `If-None-Match`
//! answers 304 when nothing changed.
//!
//! `cargo run --example serve_client -- 127.0.0.1:8090 /run/secrets/serve-token db-password`
//! prints the version and the value's length (a real app would use the value, not print it).

use std::io::{Read, Write};
use std::net::TcpStream;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, token_file, name] = &args[..] else {
        eprintln!("usage: serve_client ADDR TOKEN_FILE NAME");
        std::process::exit(2);
    };
    let token = std::fs::read_to_string(token_file).expect("read the token file");
    let mut conn = TcpStream::connect(addr).expect("connect to kvfetch");
    write!(
        conn,
        "GET /v1/secrets/{name} HTTP/1.1\r\nHost: {addr}\r\nX-Kvfetch-Token: {}\r\nConnection: close\r\n\r\n",
        token.trim()
    )
    .expect("send the request");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).expect("read the answer");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&answer[..split]);
    let value = &answer[split + 4..];
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        // 401: wrong token; 404: kvfetch does not fetch this name; 503: not fetched yet (retry).
        eprintln!(
            "kvfetch answered {status}: {}",
            String::from_utf8_lossy(value).trim()
        );
        std::process::exit(1);
    }
    let version = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Kvfetch-Version: "))
        .unwrap_or("?");
    println!("{name}: version {version}, {} bytes", value.len());
}

//! `watch --serve ADDR`: a loopback HTTP endpoint that answers `GET /v1/secrets/NAME` from the
//! sidecar's current snapshot, so an app reads a rotated value with no file watching and no
//! restart (as the AWS Secrets Manager Agent, Vault Agent's cache and Dapr do).
//!
//! Why it looks like this: an endpoint that hands out secrets is what a server-side request
//! forgery in the app would aim at, so (like the AWS agent) every request must carry a token read
//! from a file (compared in constant time), any proxy header (`X-Forwarded-For`, `Forwarded`) is
//! refused, only `GET`/`HEAD` without a body are taken, and answers go out with IP TTL 1. Only
//! names this kvfetch writes are served, from memory: an unknown name is 404 and never a Key
//! Vault request. Requests are bounded in size and header time, connections in number (429 past
//! the limit); keep-alive lets one app connection carry many requests cheaply. Nothing here logs
//! a value or the token.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::base::log;
use crate::error::Error;
use crate::modes::fetch::Snapshot;
use crate::modes::health::Status;
use crate::output::files::FileOptions;

/// `--serve ADDR`, `--serve-token-file FILE`, `--serve-allow-remote`, as the command line
/// parsed them.
pub use crate::cli::ServeConfig as Config;

mod request;
mod token;

use request::*;
pub use token::check_token_file;
use token::*;

/// The most of one request's head (request line and headers) read into memory.
pub const MAX_REQUEST: usize = 8 * 1024;
/// From a request's first byte to the end of its headers.
pub const HEADER_TIME: Duration = Duration::from_secs(2);
/// How long a kept-alive connection may wait for its next request.
pub const IDLE_TIME: Duration = Duration::from_secs(10);
/// Open connections at once; past this a new one is answered 429 and closed.
pub const MAX_CONNECTIONS: usize = 128;
/// The header that carries the token.
pub const TOKEN_HEADER: &str = "x-kvfetch-token";

/// One served value: exactly the bytes written to the other outputs (after shapes).
struct Entry {
    name: String,
    value: Vec<u8>,
    version: String,
    content_type: Option<String>,
    updated: Option<u64>,
}

/// The endpoint's state, shared by its connection threads and the main loop.
pub struct Endpoint {
    values: RwLock<HashMap<String, Arc<Entry>>>,
    status: Arc<Mutex<Status>>,
    token: [u8; 32],
    open: AtomicUsize,
    /// A snapshot has been loaded (the status says "first write done" a moment earlier).
    loaded: AtomicBool,
}

impl Endpoint {
    /// Serve what `snap` holds from now on: each shown secret under its output name.
    pub fn update(&self, snap: &Snapshot) {
        let Ok(shaped) = crate::modes::fetch::shaped(&snap.specs, &snap.values) else {
            return; // the refresher refused this snapshot already; the last good one stays
        };
        let mut table = HashMap::new();
        for ((spec, fetched), value) in snap.specs.iter().zip(&snap.values).zip(shaped) {
            let (Some(f), Some(value), false) = (fetched, value, spec.hidden) else {
                continue;
            };
            let name = spec.file_name().to_string();
            let entry = Entry {
                name: name.clone(),
                value,
                version: f.version.clone(),
                content_type: f.content_type.clone(),
                updated: f.updated,
            };
            table.insert(name, Arc::new(entry));
        }
        *self.values.write().unwrap_or_else(|e| e.into_inner()) = table;
        self.loaded.store(true, Ordering::SeqCst);
    }
}

/// Read (or create) the token, bind `config.addr` and serve it from a background thread. Errors:
/// an unreadable or unusable token file and an address that cannot be bound are usage errors
/// (exit 2); a token file that cannot be created is an output error (exit 6).
pub fn start(
    config: &Config,
    files: FileOptions,
    status: Arc<Mutex<Status>>,
) -> Result<Arc<Endpoint>, Error> {
    // Bound first: a port in use leaves no token file behind.
    let listener = TcpListener::bind(config.addr).map_err(|e| {
        let msg = format!("cannot listen on --serve {}: {e}", config.addr);
        Error::from_io(&e, Error::Usage, msg)
    })?;
    let token = load_token(config, files)?;
    if let Ok(bound) = listener.local_addr() {
        log::info(
            "secrets endpoint listening",
            &[("addr", &bound.to_string())],
        );
    }
    let endpoint = Arc::new(Endpoint {
        values: RwLock::default(),
        status,
        token: digest(&token),
        open: AtomicUsize::new(0),
        loaded: AtomicBool::new(false),
    });
    let ep = endpoint.clone();
    std::thread::Builder::new()
        .name("serve".into())
        .spawn(move || accept_loop(&listener, &ep))
        .map_err(|e| Error::Resource(format!("cannot start the --serve listener thread: {e}")))?;
    Ok(endpoint)
}

fn accept_loop(listener: &TcpListener, ep: &Arc<Endpoint>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else {
            // Out of file descriptors (or a passing fault): pause instead of spinning.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        accepted(&conn);
        if ep.open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            ep.open.fetch_sub(1, Ordering::SeqCst);
            refuse_busy(conn);
            continue;
        }
        let ep2 = ep.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                serve_connection(conn, &ep2);
                ep2.open.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            ep.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Every accepted socket: IP TTL 1 (an answer cannot travel past one hop, should the endpoint
/// be reached from off the host), and no Nagle delay on small answers.
fn accepted(conn: &TcpStream) {
    let _ = conn.set_ttl(1);
    let _ = conn.set_nodelay(true);
}

/// Past [`MAX_CONNECTIONS`]: a 429 written without waiting (it fits the socket buffer), closed.
fn refuse_busy(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(true);
    let r = Response::text(429, "too many connections; retry shortly\n");
    let _ = conn.write_all(&r.bytes(false, true));
}

/// Answer requests on one connection until it closes, idles past [`IDLE_TIME`], sends a head
/// too large or too slow, or an answer closes it (every refusal does).
fn serve_connection(mut conn: TcpStream, ep: &Endpoint) {
    let mut buf = Vec::with_capacity(1024);
    // The first request is due within HEADER_TIME of the accept: a connection that says nothing
    // holds its place for no longer than a slow one.
    let mut started = Some(Instant::now());
    // Socket options are set only when they change: a kept-alive request costs a read and a
    // write, no more system calls.
    let _ = conn.set_write_timeout(Some(HEADER_TIME));
    let mut timeout = None;
    loop {
        let head_len = match read_head(&mut conn, &mut buf, started.take(), &mut timeout) {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(r) => {
                let _ = conn.write_all(&r.bytes(false, true));
                return;
            }
        };
        let (response, head, keep) = match Request::parse(&buf[..head_len]) {
            Ok(req) => (respond(ep, &req), req.head, req.keep_alive),
            Err(r) => (r, false, false),
        };
        // A refusal closes the connection; an answer about a secret keeps it.
        let keep = keep && matches!(response.code, 200 | 304 | 404 | 406 | 503);
        if conn.write_all(&response.bytes(head, !keep)).is_err() || !keep {
            return;
        }
        buf.drain(..head_len);
    }
}

/// The answer to one well-formed request. The checks run in this order: proxy headers, body,
/// method, token, path, readiness, name.
fn respond(ep: &Endpoint, req: &Request) -> Response {
    if req.forwarded {
        return Response::text(
            400,
            "refused: a request through a proxy (X-Forwarded-For, Forwarded) is not served\n",
        );
    }
    if req.has_body {
        return Response::text(400, "refused: a request with a body\n");
    }
    if req.method != "GET" && req.method != "HEAD" {
        let mut r = Response::text(405, "only GET and HEAD\n");
        r.headers.push(("Allow", "GET, HEAD".into()));
        return r;
    }
    let authorized = matches!(&req.tokens[..], [one] if token_matches(ep, one));
    if !authorized {
        return Response::text(401, "missing or wrong X-Kvfetch-Token\n");
    }
    let Some((name, json)) = route(&req.target) else {
        return Response::text(404, "not found: GET /v1/secrets/NAME[?format=json]\n");
    };
    let Some(json) = json else {
        return Response::text(400, "the only query is format=raw or format=json\n");
    };
    let status = ep.status.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = not_serving(&status, ep.loaded.load(Ordering::SeqCst)) {
        return Response::text(503, why);
    }
    drop(status);
    let entry = ep
        .values
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&name)
        .cloned();
    match entry {
        None => Response::text(
            404,
            "no such secret: only the secrets this kvfetch fetches are served, under their output names\n",
        ),
        Some(e) => value_response(&e, json, req.if_none_match.as_deref()),
    }
}

/// Why values are not served now (the ready state's rules, outputs on disk aside): before the
/// first successful fetch, and once refreshes have failed for longer than `--max-stale`.
fn not_serving(status: &Status, loaded: bool) -> Option<&'static str> {
    if !status.first_write_done || !loaded {
        Some("not ready: the first fetch has not completed\n")
    } else if status.stale() {
        Some("not serving: refreshes have failed for longer than --max-stale\n")
    } else {
        None
    }
}

fn value_response(e: &Entry, json: bool, if_none_match: Option<&str>) -> Response {
    let etag = format!("\"{}\"", e.version);
    let mut headers = vec![
        ("ETag", etag.clone()),
        ("X-Kvfetch-Version", e.version.clone()),
    ];
    if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        return Response {
            code: 304,
            headers,
            body: Vec::new(),
        };
    }
    let body = if json {
        let Ok(value) = std::str::from_utf8(&e.value) else {
            return Response::text(
                406,
                "this value is not UTF-8 text, so JSON cannot carry it; ask without ?format=json\n",
            );
        };
        headers.push(("Content-Type", "application/json".into()));
        serde_json::json!({
            "name": e.name,
            "value": value,
            "version": e.version,
            "contentType": e.content_type,
            "updated": e.updated,
        })
        .to_string()
        .into_bytes()
    } else {
        headers.push(("Content-Type", "application/octet-stream".into()));
        e.value.clone()
    };
    Response {
        code: 200,
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(ready: bool) -> Endpoint {
        let status = Status {
            first_write_done: ready,
            ..Status::default()
        };
        let mut values = HashMap::new();
        values.insert(
            "db".to_string(),
            Arc::new(Entry {
                name: "db".into(),
                value: b"s3cret".to_vec(),
                version: "v1".into(),
                content_type: None,
                updated: Some(7),
            }),
        );
        Endpoint {
            values: RwLock::new(values),
            status: Arc::new(Mutex::new(status)),
            token: digest(b"0123456789abcdef"),
            open: AtomicUsize::new(0),
            loaded: AtomicBool::new(ready),
        }
    }

    fn ask(ep: &Endpoint, head: &str) -> Response {
        match Request::parse(head.as_bytes()) {
            Ok(r) => respond(ep, &r),
            Err(r) => r,
        }
    }

    const TOKEN: &str = "X-Kvfetch-Token: 0123456789abcdef\r\n";

    #[test]
    fn a_value_needs_the_token_and_no_proxy_header() {
        let ep = endpoint(true);
        let get = |extra: &str| ask(&ep, &format!("GET /v1/secrets/db HTTP/1.1\r\n{extra}\r\n"));
        let ok = get(TOKEN);
        assert_eq!((ok.code, &ok.body[..]), (200, &b"s3cret"[..]));
        assert_eq!(get("").code, 401);
        assert_eq!(get("X-Kvfetch-Token: 0123456789abcdeF\r\n").code, 401);
        assert_eq!(get(&format!("{TOKEN}{TOKEN}")).code, 401);
        assert_eq!(
            get(&format!("{TOKEN}X-Forwarded-For: 10.0.0.1\r\n")).code,
            400
        );
        assert_eq!(get(&format!("{TOKEN}forwarded: for=1.2.3.4\r\n")).code, 400);
        assert_eq!(get(&format!("{TOKEN}Content-Length: 3\r\n")).code, 400);
        let post = ask(&ep, &format!("POST /v1/secrets/db HTTP/1.1\r\n{TOKEN}\r\n"));
        assert_eq!(post.code, 405);
        assert_eq!(get(&format!("{TOKEN}If-None-Match: \"v1\"\r\n")).code, 304);
    }

    #[test]
    fn not_ready_or_stale_is_503_and_unknown_names_404() {
        let ep = endpoint(false);
        let get = |t: &str| ask(&ep, &format!("GET {t} HTTP/1.1\r\n{TOKEN}\r\n")).code;
        assert_eq!(get("/v1/secrets/db"), 503);
        {
            let mut s = ep.status.lock().unwrap();
            s.first_write_done = true;
            s.max_stale = Some(Duration::from_millis(1));
            s.last_success = Instant::now().checked_sub(Duration::from_secs(1));
        }
        assert_eq!(get("/v1/secrets/db"), 503);
        ep.status.lock().unwrap().max_stale = None;
        assert_eq!(get("/v1/secrets/db"), 503, "no snapshot loaded yet");
        ep.loaded.store(true, Ordering::SeqCst);
        assert_eq!(get("/v1/secrets/db"), 200);
        assert_eq!(get("/v1/secrets/other"), 404);
        assert_eq!(get("/v1/secrets/d%62"), 200);
        assert_eq!(get("/v1/secrets/db?format=xml"), 400);
        assert_eq!(get("/healthz"), 404);
        let json = ask(
            &ep,
            &format!("GET /v1/secrets/db?format=json HTTP/1.1\r\n{TOKEN}\r\n"),
        );
        let v: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(v["value"], "s3cret");
        assert_eq!(v["version"], "v1");
        assert_eq!(v["updated"], 7);
        assert!(v["contentType"].is_null());
    }

    #[test]
    fn tokens_are_checked_for_shape_and_generated_as_hex() {
        assert_eq!(
            usable_token(b"0123456789abcdef\n").unwrap(),
            b"0123456789abcdef"
        );
        assert!(usable_token(b"short\n").is_none());
        assert!(usable_token(b"0123456789 abcdef").is_none());
        assert!(usable_token(&[b'a'; 1025]).is_none());
        let t = new_token().unwrap();
        assert_eq!(t.len(), 64);
        assert!(t.iter().all(u8::is_ascii_hexdigit));
        assert_ne!(t, new_token().unwrap());
    }

    #[test]
    fn accepted_sockets_get_ttl_one() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        accepted(&s);
        assert_eq!(s.ttl().unwrap(), 1);
    }
}

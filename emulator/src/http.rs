//! A deliberately small HTTP/1.1 server: one thread per connection, keep-alive, `TCP_NODELAY`.
//!
//! The emulator needs control over the wire that a framework would hide (dropping a connection
//! mid-request, answering slowly, echoing odd headers, bodies that never end), and it must never
//! be the bottleneck of a benchmark, so it owns its loop instead of pulling in an async stack.
//! A write that fails (the client went away) ends that connection's thread and nothing else.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// The most body bytes an endless reply sends before the emulator closes the connection.
pub const ENDLESS_MAX_BYTES: u64 = 1 << 30;
/// The longest an endless reply runs before the emulator closes the connection.
pub const ENDLESS_MAX_TIME: Duration = Duration::from_secs(30);

/// The byte padded and endless bodies are filled with.
const FILL: u8 = b'a';
/// How much filler is written at once.
const FILL_CHUNK: usize = 64 * 1024;

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without the query, percent-decoded.
    pub path: String,
    /// The raw query string (without `?`).
    pub raw_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Query parameters, percent-decoded, in order.
    pub fn query(&self) -> Vec<(String, String)> {
        parse_query(&self.raw_query)
    }

    /// The first query parameter with this name (case-sensitive, as Azure treats them).
    pub fn param(&self, name: &str) -> Option<String> {
        self.query()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// What a handler wants done with a request.
pub enum Reply {
    Respond(Response),
    /// Close the connection without answering (a dropped connection fault).
    Drop,
    /// Close the connection without answering, cleanly (TLS `close_notify` first).
    CloseCleanly,
    /// Answer, then close the connection cleanly (TLS `close_notify` first).
    RespondThenClose(Response),
    /// Answer, then hold the connection open until the client closes it (or the emulator stops),
    /// whatever the request's `Connection` header asked.
    RespondThenHold(Response),
    /// `response`'s status and headers with `Content-Length: len`, then its body widened to `len`
    /// bytes by [`FILL`] bytes inserted at byte `at` of it (a `len` below the body's own length
    /// sends the body as it is). The filler is generated as it is written.
    Padded {
        response: Response,
        at: usize,
        len: usize,
    },
    /// `response`'s status and headers with `Transfer-Encoding: chunked`, its body as the first
    /// chunk, then chunks of filler until the client goes away, the emulator stops,
    /// [`ENDLESS_MAX_BYTES`] are sent or [`ENDLESS_MAX_TIME`] passes; then the connection is
    /// closed without the last chunk.
    Endless(Response),
    /// `response` written one byte at a time, flushed each time, with this pause between bytes.
    Drip(Response, Duration),
    /// `response`'s status line and headers at once, then its body one byte at a time with this
    /// pause between bytes.
    DripBody(Response, Duration),
}

/// One response; `Content-Length` is added when written.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Response {
            status,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;
pub type Wrap = Arc<dyn Fn(TcpStream) -> io::Result<Box<dyn Stream>> + Send + Sync>;

/// A byte stream the server can serve on (plain TCP or TLS).
pub trait Stream: Read + Write + Send {
    /// End the connection as its protocol should before it is dropped (TLS: `close_notify`).
    fn close_cleanly(&mut self) {}
}

impl Stream for TcpStream {}

impl Stream for Box<dyn Stream> {
    fn close_cleanly(&mut self) {
        (**self).close_cleanly();
    }
}

impl Stream for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn close_cleanly(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
    }
}

/// Counts a connection in `open` for as long as its thread lives.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accept connections until `stop` is set, each on its own thread; `open` counts the connections
/// whose thread is still running.
pub fn serve(
    listener: TcpListener,
    wrap: Wrap,
    handler: Handler,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(tcp) = conn else { continue };
        let _ = tcp.set_nodelay(true);
        // A second handle on the socket, to cut an endless reply off at its deadline.
        let Ok(socket) = tcp.try_clone() else {
            continue;
        };
        open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(open.clone());
        let (wrap, handler, stop) = (wrap.clone(), handler.clone(), stop.clone());
        thread::spawn(move || {
            let _guard = guard;
            if let Ok(stream) = wrap(tcp) {
                let _ = serve_connection(stream, &socket, &handler, &stop);
            }
        });
    }
}

fn serve_connection(
    stream: Box<dyn Stream>,
    socket: &TcpStream,
    handler: &Handler,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut reader)? else {
            return Ok(());
        };
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let head = request.method == "HEAD";
        let out = reader.get_mut();
        match handler(&request) {
            Reply::Drop => return Ok(()),
            Reply::CloseCleanly => {
                out.close_cleanly();
                return Ok(());
            }
            Reply::RespondThenClose(response) => {
                write_response(out, &response, head)?;
                out.close_cleanly();
                return Ok(());
            }
            Reply::RespondThenHold(response) => {
                write_response(out, &response, head)?;
                return hold_until_closed(&mut reader, stop);
            }
            Reply::Respond(response) => write_response(out, &response, head)?,
            Reply::Padded { response, at, len } => {
                write_padded(out, &response, at, len, head, stop)?
            }
            Reply::Endless(response) => return write_endless(out, socket, &response, stop),
            Reply::Drip(response, delay) => write_drip(out, &response, head, delay, stop)?,
            Reply::DripBody(response, delay) => write_drip_body(out, &response, head, delay, stop)?,
        }
        if close {
            return Ok(());
        }
    }
}

/// Read and discard until the client closes the connection or the emulator stops.
fn hold_until_closed(reader: &mut impl Read, stop: &AtomicBool) -> io::Result<()> {
    let mut sink = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
    Ok(())
}

fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let (path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_string(),
        path: percent_decode(path),
        raw_query: raw_query.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
    };
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Ok(None);
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            request
                .headers
                .push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    request.body = vec![0; length.min(16 << 20)];
    reader.read_exact(&mut request.body)?;
    Ok(Some(request))
}

/// The status line and headers, `framing` (the body's length header) last.
fn head_bytes(response: &Response, framing: &str) -> Vec<u8> {
    let mut buf = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (k, v) in &response.headers {
        buf.push_str(&format!("{k}: {v}\r\n"));
    }
    buf.push_str(framing);
    buf.push_str("\r\n\r\n");
    buf.into_bytes()
}

/// The whole response as it goes on the wire.
fn response_bytes(response: &Response, head: bool) -> Vec<u8> {
    let framing = format!("Content-Length: {}", response.body.len());
    let mut bytes = head_bytes(response, &framing);
    if !head {
        bytes.extend_from_slice(&response.body);
    }
    bytes
}

fn write_response(out: &mut dyn Stream, response: &Response, head: bool) -> io::Result<()> {
    out.write_all(&response_bytes(response, head))?;
    out.flush()
}

fn stopped(stop: &AtomicBool) -> io::Result<()> {
    if stop.load(Ordering::SeqCst) {
        return Err(io::Error::other("emulator stopped"));
    }
    Ok(())
}

fn write_padded(
    out: &mut dyn Stream,
    response: &Response,
    at: usize,
    len: usize,
    head: bool,
    stop: &AtomicBool,
) -> io::Result<()> {
    let body = &response.body;
    let at = at.min(body.len());
    let pad = len.saturating_sub(body.len());
    out.write_all(&head_bytes(
        response,
        &format!("Content-Length: {}", body.len() + pad),
    ))?;
    if !head {
        out.write_all(&body[..at])?;
        let filler = vec![FILL; FILL_CHUNK.min(pad)];
        let mut left = pad;
        while left > 0 {
            stopped(stop)?;
            let n = left.min(filler.len());
            out.write_all(&filler[..n])?;
            left -= n;
        }
        out.write_all(&body[at..])?;
    }
    out.flush()
}

/// Returns `Ok` when a limit ends the reply; the caller then closes the connection.
fn write_endless(
    out: &mut dyn Stream,
    socket: &TcpStream,
    response: &Response,
    stop: &AtomicBool,
) -> io::Result<()> {
    let deadline = Instant::now() + ENDLESS_MAX_TIME;
    // A client that stops reading but keeps the connection open would block a write forever:
    // at the deadline a watchdog shuts the socket down, which fails the blocked write. Returning
    // drops `_done`, which releases the watchdog.
    let watchdog = socket.try_clone()?;
    let (_done, finished) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(ENDLESS_MAX_TIME) {
            let _ = watchdog.shutdown(Shutdown::Both);
        }
    });
    out.write_all(&head_bytes(response, "Transfer-Encoding: chunked"))?;
    let mut sent = 0u64;
    if !response.body.is_empty() {
        out.write_all(format!("{:x}\r\n", response.body.len()).as_bytes())?;
        out.write_all(&response.body)?;
        out.write_all(b"\r\n")?;
        sent += response.body.len() as u64;
    }
    out.flush()?;
    let mut chunk = format!("{FILL_CHUNK:x}\r\n").into_bytes();
    chunk.extend(std::iter::repeat_n(FILL, FILL_CHUNK));
    chunk.extend_from_slice(b"\r\n");
    while sent + FILL_CHUNK as u64 <= ENDLESS_MAX_BYTES && Instant::now() < deadline {
        stopped(stop)?;
        out.write_all(&chunk)?;
        out.flush()?;
        sent += FILL_CHUNK as u64;
    }
    Ok(())
}

fn write_drip(
    out: &mut dyn Stream,
    response: &Response,
    head: bool,
    delay: Duration,
    stop: &AtomicBool,
) -> io::Result<()> {
    for (i, byte) in response_bytes(response, head).iter().enumerate() {
        if i > 0 {
            pause(delay);
        }
        stopped(stop)?;
        out.write_all(std::slice::from_ref(byte))?;
        out.flush()?;
    }
    Ok(())
}

/// The head of `response` at once, then its body as [`write_drip`] writes bytes.
fn write_drip_body(
    out: &mut dyn Stream,
    response: &Response,
    head: bool,
    delay: Duration,
    stop: &AtomicBool,
) -> io::Result<()> {
    let bytes = response_bytes(response, head);
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |i| i + 4);
    out.write_all(&bytes[..split])?;
    out.flush()?;
    for byte in &bytes[split..] {
        pause(delay);
        stopped(stop)?;
        out.write_all(std::slice::from_ref(byte))?;
        out.flush()?;
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Split and percent-decode a query string (`+` means space, as in forms).
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// Decode `%XX` escapes; malformed escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encode everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sleep helper used by slow-answer faults.
pub fn pause(d: Duration) {
    if !d.is_zero() {
        thread::sleep(d);
    }
}

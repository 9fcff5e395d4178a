//! The sidecar's status, and the small HTTP endpoint that shows it: `/healthz` (the loop runs),
//! `/readyz` (first write done and data not older than `--max-stale`) and `/metrics`
//! (Prometheus text). Names, versions, counts and times only: never a value.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::base::log;
use crate::error::Error;

/// What the sidecar knows about itself.
#[derive(Debug, Default)]
pub struct Status {
    pub first_write_done: bool,
    pub last_success: Option<Instant>,
    pub refreshes: u64,
    pub failures: BTreeMap<&'static str, u64>,
    /// Per secret (Key Vault name): how often its value changed.
    pub changes: BTreeMap<String, u64>,
    /// Per secret: the `exp` attribute, where set.
    pub expires: BTreeMap<String, u64>,
    /// Per certificate secret read with `format=`: its leaf's notAfter.
    pub certificate_expires: BTreeMap<String, i64>,
    pub max_stale: Option<Duration>,
    /// The main loop's last pass (it passes at least every [`HEARTBEAT`]).
    pub last_tick: Option<Instant>,
    /// The outputs on disk are as kvfetch wrote them (false while one could not be restored).
    pub outputs_damaged: bool,
    /// Supervised exec: restarts refused because the new environment could not be built.
    pub restarts_refused: u64,
    /// `--stale-ok`: serving the outputs an earlier kvfetch wrote, through an outage.
    pub serving_stale: bool,
    /// Starts that served stale outputs (`--stale-ok`).
    pub stale_starts: u64,
}

/// The main loops of `watch` and supervised `exec` pass at least this often.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// `/healthz` fails when the main loop has not passed for this long.
pub const STALLED_AFTER: Duration = Duration::from_secs(10);

impl Status {
    /// Ready: the first write is done, the outputs are intact, and the data is not older than
    /// `--max-stale`.
    pub fn ready(&self) -> bool {
        self.first_write_done && !self.outputs_damaged && !self.stale()
    }

    /// Alive: the main loop has passed within [`STALLED_AFTER`].
    pub fn alive(&self) -> bool {
        self.last_tick.is_none_or(|t| t.elapsed() < STALLED_AFTER)
    }

    /// Refreshes have failed for longer than `--max-stale`.
    pub fn stale(&self) -> bool {
        match (self.max_stale, self.last_success) {
            (Some(max), Some(t)) => t.elapsed() > max,
            _ => false,
        }
    }

    /// The Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let mut m = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            m.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                m.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        family(
            "kvfetch_refreshes_total",
            "counter",
            "Refreshes that fetched and wrote every secret (the first fetch included).",
            vec![(String::new(), self.refreshes.to_string())],
        );
        let kinds = [
            "no_token",
            "access_denied",
            "not_found",
            "output",
            "vault_unavailable",
            "protocol",
            "resource",
            "usage",
            "other",
        ];
        let failures = kinds
            .iter()
            .map(|k| {
                (
                    format!("{{kind=\"{k}\"}}"),
                    self.failures.get(k).copied().unwrap_or(0).to_string(),
                )
            })
            .collect();
        family(
            "kvfetch_refresh_failures_total",
            "counter",
            "Failed refreshes by kind of failure.",
            failures,
        );
        let age = self.last_success.map_or("NaN".to_string(), |t| {
            format!("{:.3}", t.elapsed().as_secs_f64())
        });
        family(
            "kvfetch_seconds_since_last_success",
            "gauge",
            "Seconds since the last successful refresh.",
            vec![(String::new(), age)],
        );
        family(
            "kvfetch_restarts_refused_total",
            "counter",
            "Supervised exec: restarts refused because the new environment could not be built.",
            vec![(String::new(), self.restarts_refused.to_string())],
        );
        family(
            "kvfetch_serving_stale",
            "gauge",
            "1 while serving outputs written before a vault or identity outage (--stale-ok).",
            vec![(String::new(), u8::from(self.serving_stale).to_string())],
        );
        family(
            "kvfetch_stale_starts_total",
            "counter",
            "Starts that kept the outputs written before, through an outage (--stale-ok).",
            vec![(String::new(), self.stale_starts.to_string())],
        );
        family(
            "kvfetch_log_lines_dropped_total",
            "counter",
            "Log lines dropped because stderr was not being read.",
            vec![(String::new(), crate::base::log::dropped().to_string())],
        );
        family(
            "kvfetch_ready",
            "gauge",
            "1 when /readyz answers 200.",
            vec![(String::new(), u8::from(self.ready()).to_string())],
        );
        let changes = self
            .changes
            .iter()
            .map(|(s, n)| (format!("{{secret=\"{s}\"}}"), n.to_string()))
            .collect();
        family(
            "kvfetch_secret_changes_total",
            "counter",
            "Times a secret's value or version changed after the first fetch.",
            changes,
        );
        let expires = self
            .expires
            .iter()
            .map(|(s, e)| (format!("{{secret=\"{s}\"}}"), e.to_string()))
            .collect();
        family(
            "kvfetch_secret_expires_timestamp_seconds",
            "gauge",
            "The secret's exp attribute (Unix seconds), where set.",
            expires,
        );
        let requests = crate::vault::throttle::requests()
            .into_iter()
            .map(|((vault, kind), n)| {
                (
                    format!("{{vault=\"{vault}\",kind=\"{kind}\"}}"),
                    n.to_string(),
                )
            })
            .collect();
        family(
            "kvfetch_requests_total",
            "counter",
            "Key Vault requests sent, by vault and kind (get: one secret; list: one page of the list), retries included.",
            requests,
        );
        let throttled = crate::vault::throttle::throttled()
            .into_iter()
            .map(|(vault, n)| (format!("{{vault=\"{vault}\"}}"), n.to_string()))
            .collect();
        family(
            "kvfetch_throttled_total",
            "counter",
            "Key Vault answers of 429 (throttled), by vault.",
            throttled,
        );
        let certificates = self
            .certificate_expires
            .iter()
            .map(|(s, e)| (format!("{{secret=\"{s}\"}}"), e.to_string()))
            .collect();
        family(
            "kvfetch_certificate_expires_timestamp_seconds",
            "gauge",
            "A certificate secret's leaf notAfter (Unix seconds), for secrets read with format=.",
            certificates,
        );
        m
    }
}

/// The most of a request the listener reads: the request line is all it needs.
const MAX_REQUEST: usize = 8 * 1024;
/// How long one connection may take in all, reading and writing.
const CONNECTION_TIME: Duration = Duration::from_secs(2);
/// Connections still sending their request line at once; beyond this the oldest is closed to
/// make room, so idle or dribbling clients can never lock a probe out.
const MAX_READING: usize = 32;

/// A connection that has not yet sent its request line.
struct Reading {
    id: u64,
    since: Instant,
    stream: TcpStream,
}

/// Serve the endpoints on `addr` from a background thread, each connection on its own short
/// thread: a slow or hostile client can hold only its own connection, for at most
/// [`CONNECTION_TIME`], never read more than [`MAX_REQUEST`] bytes into memory, and is closed
/// first when [`MAX_READING`] connections are waiting at once.
pub fn serve(addr: &str, status: Arc<Mutex<Status>>) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        let msg = format!("cannot listen on --health-listen {addr}: {e}");
        Error::from_io(&e, Error::Usage, msg)
    })?;
    // The address actually bound: with port 0 the system chose it, and this line is how a
    // script (or a test) learns it.
    if let Ok(bound) = listener.local_addr() {
        log::info(
            "health endpoints listening",
            &[("addr", &bound.to_string())],
        );
    }
    let reading: Arc<Mutex<Vec<Reading>>> = Arc::default();
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let accepted = listener.incoming().filter_map(|c| match c {
                Ok(c) => Some(c),
                Err(_) => {
                    // Out of file descriptors (or a passing fault): pause instead of spinning.
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
            });
            for (id, conn) in (0u64..).zip(accepted) {
                admit(&reading, id, &conn);
                let (status, list) = (status.clone(), reading.clone());
                let spawned = std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || serve_one(conn, &status, &list, id));
                if spawned.is_err() {
                    // No thread to be had (a process limit): close the connection now (its
                    // copy in the list would keep it open, and the probe waiting).
                    done_reading(&reading, id);
                }
            }
        })
        .map_err(|e| Error::Resource(format!("cannot start the health listener thread: {e}")))?;
    Ok(())
}

/// Count `conn` as reading; when too many are, close the one waiting longest.
fn admit(reading: &Mutex<Vec<Reading>>, id: u64, conn: &TcpStream) {
    let mut list = reading.lock().unwrap_or_else(|e| e.into_inner());
    if list.len() >= MAX_READING
        && let Some(oldest) = (0..list.len()).min_by_key(|i| list[*i].since)
    {
        let _ = list
            .swap_remove(oldest)
            .stream
            .shutdown(std::net::Shutdown::Both);
    }
    if let Ok(stream) = conn.try_clone() {
        list.push(Reading {
            id,
            since: Instant::now(),
            stream,
        });
    }
}

fn done_reading(reading: &Mutex<Vec<Reading>>, id: u64) {
    reading
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|r| r.id != id);
}

/// Answer one connection: read the request line (bounded in size and time), answer, close.
fn serve_one(mut conn: TcpStream, status: &Mutex<Status>, reading: &Mutex<Vec<Reading>>, id: u64) {
    let until = Instant::now() + CONNECTION_TIME;
    let line = read_request_line(&mut conn, until);
    done_reading(reading, id);
    let Some(line) = line else {
        return;
    };
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (code, body) = answer(&path, &status.lock().unwrap_or_else(|e| e.into_inner()));
    let reason = match code {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    let kind = if path == "/metrics" {
        "text/plain; version=0.0.4"
    } else {
        "text/plain"
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let left = until.saturating_duration_since(Instant::now());
    let _ = conn.set_write_timeout(Some(left.max(Duration::from_millis(1))));
    let _ = conn.write_all(response.as_bytes());
}

/// The request line, read a chunk at a time until a line break, [`MAX_REQUEST`] bytes or
/// `until`, whichever comes first.
fn read_request_line(conn: &mut TcpStream, until: Instant) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while buf.len() < MAX_REQUEST {
        let left = until.checked_duration_since(Instant::now())?;
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let n = conn.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            buf.truncate(end);
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
    }
    None
}

fn answer(path: &str, status: &Status) -> (u16, String) {
    match path {
        "/healthz" if status.alive() => (200, "ok\n".into()),
        "/healthz" => (
            503,
            "not alive: the main loop has not passed for over 10 s\n".into(),
        ),
        "/readyz" if status.ready() && status.serving_stale => (
            200,
            "ready (stale): serving the outputs written before a vault or identity outage (--stale-ok); they are replaced when the vault answers\n".into(),
        ),
        "/readyz" if status.ready() => (200, "ready\n".into()),
        "/readyz" if !status.first_write_done => {
            (503, "not ready: the first fetch has not completed\n".into())
        }
        "/readyz" if status.outputs_damaged => (
            503,
            "not ready: an output was changed or removed and could not be restored\n".into(),
        ),
        "/readyz" => (
            503,
            "not ready: refreshes have failed for longer than --max-stale\n".into(),
        ),
        "/metrics" => (200, status.metrics()),
        _ => (404, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_fails_when_the_loop_stalls_and_readyz_when_outputs_are_damaged() {
        let mut s = Status {
            first_write_done: true,
            last_tick: Some(Instant::now()),
            ..Status::default()
        };
        assert_eq!(answer("/healthz", &s).0, 200);
        assert_eq!(answer("/readyz", &s).0, 200);
        s.last_tick = Instant::now().checked_sub(STALLED_AFTER + Duration::from_secs(1));
        assert_eq!(answer("/healthz", &s).0, 503);
        s.outputs_damaged = true;
        assert_eq!(answer("/readyz", &s).0, 503);
        assert!(s.metrics().contains("kvfetch_ready 0\n"));
    }
}

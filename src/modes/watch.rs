//! `kvfetch watch`: the sidecar. The first fetch follows `fetch`'s rules and exit codes; then the
//! outputs are kept fresh until SIGTERM/SIGINT (exit 0 within a second, whatever is in flight).
//! SIGHUP refreshes now. Errors after the first write never end the process, except
//! `--max-stale`.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use crate::cli::Options;
use crate::error::Error;
use crate::modes::fetch::{Session, plan};
use crate::modes::refresh::{Event, Outcome, Refresher};
use crate::{base::log, base::signals, modes::health, modes::serve};

/// Run `watch`.
/// Run `watch`; returns the exit code: 0 when stopped after the first write, 128+N when signal
/// N stopped it before (nothing was written, which must not look like success).
pub fn run(opts: &Options, env: &HashMap<String, String>) -> Result<u8, Error> {
    warn_token_in_argv(opts);
    let session = Session::new(opts, env, plan(opts)?)?;
    // A ready file left by a crashed instance must not say "ready" for this one (removed once
    // every check has passed).
    remove_ready_file(opts);
    let (tx, rx) = mpsc::channel();
    signals::forward(
        &[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT],
        tx.clone(),
        Event::Signal,
    )?;
    let notifier = Notifier::new(opts.notify_url.clone(), &session.trust);
    let mut refresher = Refresher::new(session, opts, tx);
    if let Some(addr) = &opts.health_listen {
        health::serve(addr, refresher.status.clone())?;
    }
    let files = refresher.session().plan.files;
    let endpoint = (opts.serve.as_ref())
        .map(|c| {
            serve::check_token_file(c, opts, &refresher.session().plan)?;
            serve::start(c, files, refresher.status.clone())
        })
        .transpose()?;
    let serve_current = |r: &Refresher| {
        if let (Some(ep), Some(snap)) = (&endpoint, &r.current) {
            ep.update(snap);
        }
    };
    refresher.start();
    loop {
        // The loop passes at least every heartbeat, so /healthz can tell a stalled loop.
        refresher.lock().last_tick = Some(std::time::Instant::now());
        let event = match rx.recv_timeout(refresher.wait().min(health::HEARTBEAT)) {
            Ok(event) => event,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if refresher.wait().is_zero() {
                    refresher.start();
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::Other("the event channel closed".into()));
            }
        };
        match event {
            Event::Signal(libc::SIGHUP) => {
                log::info("SIGHUP: refreshing now", &[]);
                refresher.start();
            }
            Event::Signal(sig) => {
                log::info("stopping", &[("signal", &sig.to_string())]);
                stop(opts, &refresher);
                let before_first_write = refresher.current.is_none();
                return Ok(if before_first_write {
                    128 + sig as u8
                } else {
                    0
                });
            }
            Event::Fetched(result) => match refresher.handle(result) {
                Ok(Outcome::First) => {
                    serve_current(&refresher);
                    ready(opts, &refresher)?;
                }
                Ok(Outcome::Stale) => ready_stale(opts)?,
                Ok(Outcome::Changed(names)) => {
                    serve_current(&refresher);
                    notifier.notify(names);
                }
                Ok(_) => {}
                Err(e) => {
                    remove_ready_file(opts);
                    return Err(e);
                }
            },
        }
    }
}

/// A `--notify-url` flag with a query (a webhook's token) is in argv, which every process of
/// the machine can read (`/proc/PID/cmdline`, `ps`). Refusing it would break working setups, so
/// kvfetch warns once and points at the variable, which only the process's own user can read.
/// (User information is refused with every URL.)
fn warn_token_in_argv(opts: &Options) {
    let in_argv = !opts.from_env.contains(&"notify-url");
    if in_argv && opts.notify_url.as_deref().is_some_and(|u| u.contains('?')) {
        log::warn(
            "--notify-url carries a query (a webhook's token?) on the command line (argv), where every process of this machine can read it (/proc/PID/cmdline, ps); give the URL in KVFETCH_NOTIFY_URL instead",
            &[],
        );
    }
}

fn ready(opts: &Options, refresher: &Refresher) -> Result<(), Error> {
    let count = refresher.current.as_ref().map_or(0, |c| c.shown().count());
    log::info(
        "secrets written; watching for changes",
        &[
            ("count", &count.to_string()),
            (
                "refresh",
                &crate::base::retry::human(opts.refresh.unwrap_or_default()),
            ),
        ],
    );
    if let Some(path) = &opts.ready_file {
        // Like every output: a temp file with the final mode, renamed over (never through) a
        // symlink.
        let files = refresher.session().plan.files;
        crate::output::files::write_all(&[(path.clone(), b"ready\n".to_vec(), files)])?;
    }
    Ok(())
}

/// `--stale-ok` through an outage: ready, marked stale (the warning was logged); the ready
/// file says so.
fn ready_stale(opts: &Options) -> Result<(), Error> {
    if let Some(path) = &opts.ready_file {
        let files = crate::output::FileOptions {
            mode: opts.file_mode,
            owner: opts.owner,
        };
        crate::output::files::write_all(&[(path.clone(), b"ready (stale)\n".to_vec(), files)])?;
    }
    Ok(())
}

fn remove_ready_file(opts: &Options) {
    if let Some(path) = &opts.ready_file {
        let _ = std::fs::remove_file(path);
    }
}

/// On SIGTERM/SIGINT: remove the ready file, and with `--cleanup` everything kvfetch wrote.
fn stop(opts: &Options, refresher: &Refresher) {
    remove_ready_file(opts);
    if !opts.cleanup {
        return;
    }
    if let Some(manifest) = crate::modes::fetch::manifest_path(opts) {
        let _ = std::fs::remove_file(manifest);
    }
    if let Some(dir) = &opts.dir {
        if opts.dir_layout == crate::output::Layout::Atomic {
            crate::output::atomic::remove_all(dir);
        }
        let current = refresher.current.as_ref().map(|c| &c.specs[..]);
        let specs = current.unwrap_or(&refresher.session().plan.specs);
        for spec in specs.iter().filter(|s| !s.hidden) {
            let _ = std::fs::remove_file(dir.join(spec.file_name()));
        }
        let _ = std::fs::remove_dir(dir); // only if now empty
    }
    for t in crate::modes::fetch::template_dests(&refresher.session().plan) {
        let _ = std::fs::remove_file(t);
    }
    if let Some(file) = &opts.env_file {
        let _ = std::fs::remove_file(file);
    }
}

/// An HTTP client's error text with the notify URL's query (a webhook's token) cut out.
fn hide_query(text: &str, url: &str) -> String {
    match url.split_once('?') {
        Some((_, query)) if !query.is_empty() => text.replace(query, "(hidden)"),
        _ => text.to_string(),
    }
}

/// POSTs `{"changed":[names]}` to `--notify-url`; names that could not be delivered are sent
/// again with the next change.
struct Notifier {
    url: Option<String>,
    /// Trusting `--ca-file`, `SSL_CERT_FILE` and `SSL_CERT_DIR` like every remote.
    agent: ureq::Agent,
    pending: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Notifier {
    fn new(url: Option<String>, trust: &crate::net::http::Trust) -> Notifier {
        Notifier {
            url,
            agent: crate::net::http::notify_agent(trust),
            pending: Default::default(),
        }
    }

    fn notify(&self, names: Vec<String>) {
        let Some(url) = self.url.clone() else { return };
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(names);
        let pending = self.pending.clone();
        let agent = self.agent.clone();
        let spawned = std::thread::Builder::new().spawn(move || {
            let names: Vec<String> =
                std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_iter()
                    .collect();
            if names.is_empty() {
                return;
            }
            let body = serde_json::json!({ "changed": names }).to_string();
            let shown = crate::net::url::shown(&url);
            let result = agent
                .post(&url)
                .header("Content-Type", "application/json")
                .config()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .send(body.as_bytes());
            match result {
                Ok(r) if r.status().is_success() => log::info(
                    "notified",
                    &[("url", &shown), ("changed", &names.join(","))],
                ),
                outcome => {
                    let why = match outcome {
                        Ok(r) => format!("HTTP {}", r.status().as_u16()),
                        Err(e) => hide_query(&e.to_string(), &url),
                    };
                    log::warn(
                        "change notification failed; will retry with the next change",
                        &[("url", &shown), ("error", &why)],
                    );
                    pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(names);
                }
            }
        });
        if let Err(e) = spawned {
            log::warn(
                "cannot start the notify thread; the names stay pending for the next change",
                &[("error", &e.to_string())],
            );
        }
    }
}

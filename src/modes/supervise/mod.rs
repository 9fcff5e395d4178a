//! Supervised `exec` (`--refresh`): kvfetch stays the parent, as tini or dumb-init would, and
//! refreshes like `watch`, restarting or signalling the child when a secret changes.
//!
//! What it guarantees:
//! - Safe as PID 1: it is a child subreaper and reaps every orphan.
//! - The child runs in its own process group; stop, restart and forwarded signals go to the
//!   whole group, so `sh -c 'app; …'` cannot leave `app` behind with an old secret.
//! - Shutdown wins: after SIGTERM/SIGINT no child is ever started again (a restart in progress
//!   becomes the shutdown), and kvfetch exits within `--grace` (plus the reaping) with the
//!   child's status; SIGKILL goes once, to the group, when `--grace` runs out.
//! - A new environment is built and checked before the running child is touched: if it cannot
//!   be (a NUL, over the kernel's size limits), the child keeps running with the old secrets,
//!   the refusal is logged and counted, and the next refresh tries again.
//! - Every child starts with default signal dispositions and an empty signal mask, and gets
//!   SIGTERM should kvfetch die (`PR_SET_PDEATHSIG`).
//! - When kvfetch ends, no process of any generation survives it: its group and every orphan
//!   left with kvfetch get SIGTERM, then SIGKILL after `--grace`.
//! - `?file` variables name files in a private directory of kvfetch's own on tmpfs
//!   ([`PRIVATE_BASE`], mode 0700, files 0400): a rotation replaces each file atomically before
//!   the child is signalled (`--on-change signal:SIG` or `none`), or before the new generation
//!   starts (`restart`); the directory is removed when kvfetch exits.
//!
//! The child gets the terminal when kvfetch holds it: a Ctrl-C then reaches the child once,
//! from the terminal, and not again through kvfetch.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::cli::{OnChange, Options};
use crate::error::Error;
use crate::modes::fetch::{Session, Snapshot};
use crate::modes::health::HEARTBEAT;
use crate::modes::refresh::{Event, Outcome, Refresher};
use crate::output::memfile::PrivateDir;
use crate::{base::log, base::signals, modes::health};

mod child;
use child::*;

const FORWARDED: [i32; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Where supervised exec makes the private directory of `?file` variables: tmpfs in Docker and
/// Kubernetes, as on most Linux systems.
pub const PRIVATE_BASE: &str = "/dev/shm";

/// Restarts for changed secrets are at least this far apart (changes in between are coalesced).
pub const RESTART_MIN_GAP: Duration = Duration::from_secs(10);

type Env = Vec<(OsString, OsString)>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Running,
    /// The old generation got SIGTERM for a restart; the new one starts with `env` once the old
    /// group is gone.
    Restarting {
        kill_at: Instant,
        killed: bool,
        /// The old child's status, once it has exited.
        leader: Option<u8>,
        env: Env,
        /// Orphans already sent SIGTERM: those of the restart's start, and those re-parented to
        /// kvfetch since (when the old child or an orphan exits), each signalled once.
        signalled: Vec<i32>,
    },
    /// Shutting down: nothing starts again; kvfetch ends with the leader's status once the
    /// group is gone.
    Stopping {
        kill_at: Instant,
        killed: bool,
        status: Option<u8>,
    },
}

struct Supervisor<'a> {
    opts: &'a Options,
    program: PathBuf,
    argv: &'a [OsString],
    base_env: Env,
    /// The current child, which is also its process group's id.
    pid: i32,
    phase: Phase,
    restart_pending: bool,
    /// The pending restart was refused for its environment: retried only after a new fetch.
    blocked: bool,
    last_restart: Option<Instant>,
    /// kvfetch started in the terminal's foreground: every child (restarts too) gets the terminal.
    tty: bool,
    /// The files of `?file` variables (when there are any); removed when the supervisor is
    /// dropped, after [`Supervisor::finish`].
    files: Option<PrivateDir>,
    /// The files could not be rewritten after a change: tried again after every refresh, and
    /// the change acted on (the signal sent) once they are.
    files_stale: bool,
}

/// The private directory for the `?file` variables among `specs`, if there are any.
pub fn private_dir(specs: &[crate::spec::SecretSpec]) -> Result<Option<PrivateDir>, Error> {
    match specs.iter().any(|s| s.file) {
        true => PrivateDir::create(Path::new(PRIVATE_BASE)).map(Some),
        false => Ok(None),
    }
}

/// Supervise `argv` until it exits; returns its exit code. `files` holds the `?file`
/// variables' files (see [`private_dir`]).
pub fn run(
    opts: &Options,
    session: Session,
    values: Snapshot,
    base_env: Env,
    program: PathBuf,
    argv: &[OsString],
    files: Option<PrivateDir>,
) -> Result<u8, Error> {
    // SAFETY: plain prctl call with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let (tx, rx) = mpsc::channel();
    let mut caught = FORWARDED.to_vec();
    caught.push(libc::SIGCHLD);
    signals::forward(&caught, tx.clone(), Event::Signal)?;
    let mut refresher = Refresher::new(session, opts, tx);
    refresher.seed(values);
    if let Some(addr) = &opts.health_listen {
        health::serve(addr, refresher.status.clone())?;
    }
    let mut sup = Supervisor {
        opts,
        program,
        argv,
        base_env,
        pid: 0,
        phase: Phase::Running,
        restart_pending: false,
        blocked: false,
        last_restart: None,
        tty: holds_terminal(),
        files,
        files_stale: false,
    };
    let env = sup.env_for(&refresher)?;
    sup.pid = sup.spawn(env)?;
    let result = supervise(&mut sup, &mut refresher, &rx);
    sup.finish();
    result
}

/// The main loop; every way out of it goes through [`Supervisor::finish`].
fn supervise(
    sup: &mut Supervisor,
    refresher: &mut Refresher,
    rx: &mpsc::Receiver<Event>,
) -> Result<u8, Error> {
    loop {
        refresher.lock().last_tick = Some(Instant::now());
        let stopping = matches!(sup.phase, Phase::Stopping { .. });
        // No refresh starts while stopping, so its timer must not drive the loop then.
        let refresh_wait = if stopping {
            Duration::from_secs(3600)
        } else {
            refresher.wait()
        };
        let wait = refresh_wait.min(sup.timer()).min(HEARTBEAT);
        let event = match rx.recv_timeout(wait) {
            Ok(event) => Some(event),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Other("the event channel closed".into()));
            }
        };
        let done = match event {
            None => {
                if refresher.wait().is_zero() && !stopping {
                    refresher.start();
                }
                sup.tick(refresher)?
            }
            Some(Event::Signal(libc::SIGCHLD)) => sup.reaped()?,
            Some(Event::Signal(sig @ (libc::SIGTERM | libc::SIGINT))) => sup.shutdown(sig)?,
            Some(Event::Signal(sig)) => {
                sup.send(sig);
                None
            }
            Some(Event::Fetched(result)) => match refresher.handle(result)? {
                Outcome::Changed(names) => sup.changed(&names, refresher)?,
                _ => sup.retry_blocked(refresher)?,
            },
        };
        if let Some(code) = done {
            return Ok(code);
        }
    }
}

impl Supervisor<'_> {
    /// How long until a timer of ours (SIGKILL after --grace, a held-back restart) is due.
    fn timer(&self) -> Duration {
        let now = Instant::now();
        match (&self.phase, self.restart_pending, self.last_restart) {
            (
                Phase::Restarting {
                    kill_at,
                    killed: false,
                    ..
                }
                | Phase::Stopping {
                    kill_at,
                    killed: false,
                    ..
                },
                _,
                _,
            ) => kill_at.saturating_duration_since(now),
            (Phase::Running, true, Some(t)) if !self.blocked => {
                (t + RESTART_MIN_GAP).saturating_duration_since(now)
            }
            _ => Duration::from_secs(3600),
        }
    }

    /// SIGTERM/SIGINT: pass it to the group and stop; nothing is started again.
    fn shutdown(&mut self, sig: i32) -> Result<Option<u8>, Error> {
        log::info("stopping", &[("signal", &sig.to_string())]);
        self.send(sig);
        if let Phase::Stopping { .. } = self.phase {
            return Ok(None);
        }
        // A restart whose old child already exited: the shutdown ends with its status.
        let status = match &self.phase {
            Phase::Restarting { leader, .. } => *leader,
            _ => None,
        };
        self.restart_pending = false;
        self.phase = Phase::Stopping {
            kill_at: Instant::now() + self.opts.grace,
            killed: false,
            status,
        };
        self.progress()
    }

    /// Timers: SIGKILL once when --grace runs out; a held-back restart.
    fn tick(&mut self, refresher: &Refresher) -> Result<Option<u8>, Error> {
        match &mut self.phase {
            Phase::Restarting {
                kill_at, killed, ..
            }
            | Phase::Stopping {
                kill_at, killed, ..
            } if !*killed && Instant::now() >= *kill_at => {
                *killed = true;
                log::warn(
                    "the child's process group outlived --grace after SIGTERM; sending SIGKILL",
                    &[("pgid", &self.pid.to_string())],
                );
                self.send(libc::SIGKILL);
                signal_orphans(self.pid, libc::SIGKILL);
            }
            _ => {}
        }
        self.maybe_restart(refresher)?;
        self.progress()
    }

    fn changed(&mut self, names: &[String], refresher: &Refresher) -> Result<Option<u8>, Error> {
        // A restart rewrites the files with the new generation's environment; a child that is
        // signalled (or left alone) finds them rewritten first.
        if self.opts.on_change != OnChange::Restart && !self.files_written(refresher) {
            return self.progress();
        }
        match self.opts.on_change {
            OnChange::Restart if self.phase == Phase::Running => {
                self.restart_pending = true;
                self.blocked = false;
                self.maybe_restart(refresher)?;
            }
            OnChange::Restart => {
                // A change during a restart: the new generation starts with it.
                if let (Phase::Restarting { env, .. }, Ok(new)) = (
                    &mut self.phase,
                    Self::env_of(self.argv, &self.base_env, self.files.as_ref(), refresher),
                ) {
                    *env = new;
                }
            }
            OnChange::Signal(sig) if self.phase == Phase::Running => {
                log::info(
                    "secrets changed; signalling the child",
                    &[("changed", &names.join(",")), ("signal", &sig.to_string())],
                );
                self.send(sig);
            }
            _ => {}
        }
        self.progress()
    }

    /// Rewrite the files of `?file` variables after a change; on failure, say so and try again
    /// after the next refresh.
    fn files_written(&mut self, refresher: &Refresher) -> bool {
        match self.write_files(refresher) {
            Ok(()) => {
                self.files_stale = false;
                true
            }
            Err(e) => {
                self.files_stale = true;
                log::error(
                    &format!(
                        "secrets changed but the files of ?file variables cannot be rewritten, so they keep the old values and the child is not signalled; retrying after the next refresh: {e}"
                    ),
                    &[("kind", e.kind())],
                );
                false
            }
        }
    }

    /// After a refresh: a restart refused for its environment is tried again (once per fetch).
    fn retry_blocked(&mut self, refresher: &Refresher) -> Result<Option<u8>, Error> {
        if self.files_stale && self.files_written(refresher) {
            return self.changed(&[], refresher);
        }
        if self.restart_pending && self.blocked {
            self.blocked = false;
            self.maybe_restart(refresher)?;
        }
        self.progress()
    }

    /// Start a pending restart if it is due: build the new environment first, and only if it
    /// can be used, stop the old generation.
    fn maybe_restart(&mut self, refresher: &Refresher) -> Result<(), Error> {
        let spaced = self
            .last_restart
            .is_none_or(|t| t.elapsed() >= RESTART_MIN_GAP);
        if self.phase != Phase::Running || !self.restart_pending || self.blocked || !spaced {
            return Ok(());
        }
        let env = match self
            .env_for(refresher)
            .and_then(|env| self.runnable().map(|()| env))
        {
            Ok(env) => env,
            Err(e) => {
                self.blocked = true;
                refresher.lock().restarts_refused += 1;
                log::error(
                    &format!(
                        "secrets changed but the child cannot be started with them, so the running child keeps the old ones; retrying after the next refresh: {e}"
                    ),
                    &[("kind", e.kind())],
                );
                return Ok(()); // restart_pending stays: retried after the next refresh
            }
        };
        log::info(
            "secrets changed; restarting the child",
            &[("pid", &self.pid.to_string())],
        );
        self.restart_pending = false;
        self.last_restart = Some(Instant::now());
        self.phase = Phase::Restarting {
            kill_at: Instant::now() + self.opts.grace,
            killed: false,
            leader: None,
            env,
            signalled: Vec::new(),
        };
        self.send(libc::SIGTERM);
        self.signal_new_orphans();
        Ok(())
    }

    /// During a restart: SIGTERM to every orphan of the old generation not yet sent one (an
    /// orphan that left the group becomes kvfetch's only when its parent exits).
    fn signal_new_orphans(&mut self) {
        let Phase::Restarting { signalled, .. } = &mut self.phase else {
            return;
        };
        for pid in children() {
            if pid != self.pid && !signalled.contains(&pid) {
                // SAFETY: kill with the pid of a live child of ours.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                signalled.push(pid);
            }
        }
    }

    /// Reap every exited child (orphans included) and see what that means.
    fn reaped(&mut self) -> Result<Option<u8>, Error> {
        for (pid, status) in reap_all() {
            if pid != self.pid {
                continue;
            }
            let code = exit_code(status);
            match &mut self.phase {
                Phase::Running => {
                    log::info(
                        "child exited",
                        &[("pid", &pid.to_string()), ("exit_code", &code.to_string())],
                    );
                    return Ok(Some(code));
                }
                Phase::Restarting { leader, .. } => *leader = Some(code),
                Phase::Stopping { status, .. } => *status = Some(code),
            }
        }
        self.signal_new_orphans();
        self.progress()
    }

    /// A restart whose old group is gone starts the new generation.
    fn next_generation(&mut self) -> Result<(), Error> {
        let Phase::Restarting {
            leader: Some(_),
            env,
            ..
        } = &self.phase
        else {
            return Ok(());
        };
        // The old generation is gone: its group, and every orphan it left with kvfetch.
        if !group_gone(self.pid) || children().iter().any(|p| *p != self.pid) {
            return Ok(());
        }
        let env = env.clone();
        self.phase = Phase::Running;
        self.pid = self.spawn(env)?;
        Ok(())
    }

    /// Move on where we can: the next generation once the old one is gone; the leader's status
    /// once a shutdown's group is gone.
    fn progress(&mut self) -> Result<Option<u8>, Error> {
        self.next_generation()?;
        Ok(match self.phase {
            Phase::Stopping {
                status: Some(code), ..
            } if group_gone(self.pid) => Some(code),
            _ => None,
        })
    }

    /// Before kvfetch exits: the child's group and every orphan left with kvfetch get SIGTERM,
    /// then SIGKILL once --grace runs out (counted from a shutdown's start, so it is not paid
    /// twice); then SIGKILL and reaping go on until no child is left (the children of killed
    /// orphans are re-parented to kvfetch a moment later), for at most a second more.
    fn finish(&mut self) {
        let until = match self.phase {
            Phase::Stopping { kill_at, .. } => kill_at,
            _ => Instant::now() + self.opts.grace,
        };
        self.send_while_alive(libc::SIGTERM);
        signal_orphans(0, libc::SIGTERM);
        while Instant::now() < until {
            reap_all();
            if children().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let last = Instant::now() + Duration::from_secs(1);
        while Instant::now() < last {
            self.send_while_alive(libc::SIGKILL);
            signal_orphans(0, libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(10));
            reap_all();
            if children().is_empty() {
                return;
            }
        }
    }
}

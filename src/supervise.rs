//! Supervised `exec` (`--refresh`): kvfetch stays the parent. It is safe as PID 1 (it reaps every
//! orphan: it is a child subreaper), forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2
//! and SIGWINCH to the child, exits with the child's status (128+N when killed by signal N), and
//! refreshes like `watch`, restarting or signalling the child when a secret changes.
//!
//! The child runs in its own process group and, when kvfetch holds the terminal, gets the
//! terminal: a Ctrl-C then reaches the child once, from the terminal, and not again through
//! kvfetch.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::cli::{OnChange, Options};
use crate::error::Error;
use crate::exec::{child_env, exec_error};
use crate::fetch::Session;
use crate::keyvault::Fetched;
use crate::refresh::{Event, Outcome, Refresher};
use crate::{log, signals};

const FORWARDED: [i32; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Restarts for changed secrets are at least this far apart (changes in between are coalesced).
pub const RESTART_MIN_GAP: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// SIGTERM sent for a restart; SIGKILL at this instant if it is still alive.
    Restarting(Instant),
}

struct Supervisor<'a> {
    opts: &'a Options,
    program: PathBuf,
    argv: &'a [String],
    base_env: Vec<(OsString, OsString)>,
    pid: i32,
    state: State,
    restart_pending: bool,
    last_restart: Option<Instant>,
    /// kvfetch started in the terminal's foreground: every child (restarts too) gets the terminal.
    tty: bool,
}

/// Supervise `argv` until it exits; returns its exit code.
pub fn run(
    opts: &Options,
    session: Session,
    values: Vec<Fetched>,
    base_env: Vec<(OsString, OsString)>,
    program: PathBuf,
    argv: &[String],
) -> Result<u8, Error> {
    // SAFETY: plain prctl call with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let (tx, rx) = mpsc::channel();
    let mut caught = FORWARDED.to_vec();
    caught.push(libc::SIGCHLD);
    signals::forward(&caught, tx.clone(), Event::Signal)?;
    let mut refresher = Refresher::new(session, opts, tx);
    refresher.seed(values);
    let mut sup = Supervisor {
        opts,
        program,
        argv,
        base_env,
        pid: 0,
        state: State::Running,
        restart_pending: false,
        last_restart: None,
        tty: holds_terminal(),
    };
    sup.pid = sup.spawn(&refresher)?;
    loop {
        match rx.recv_timeout(refresher.wait().min(sup.timer())) {
            Err(RecvTimeoutError::Timeout) => {
                if refresher.wait().is_zero() {
                    refresher.start();
                }
                sup.tick();
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Other("the event channel closed".into()));
            }
            Ok(Event::Signal(libc::SIGCHLD)) => {
                if let Some(code) = sup.reap(&refresher)? {
                    return Ok(code);
                }
            }
            Ok(Event::Signal(sig)) => sup.send(sig),
            Ok(Event::Fetched(result)) => match refresher.handle(result) {
                Ok(Outcome::Changed(names)) => sup.changed(&names),
                Ok(_) => {}
                Err(e) => {
                    sup.stop();
                    return Err(e);
                }
            },
        }
    }
}

impl Supervisor<'_> {
    /// Start the child with the current secrets in its environment.
    fn spawn(&mut self, refresher: &Refresher) -> Result<i32, Error> {
        let values = refresher.current.as_deref().unwrap_or_default();
        let env = child_env(&self.base_env, &refresher.session().plan.specs, values)?;
        let mut command = std::process::Command::new(&self.program);
        command
            .arg0(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(env)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe. Should kvfetch die (even by SIGKILL), the child
        // gets SIGTERM instead of running on unsupervised.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
                Ok(())
            });
        }
        let child = command
            .spawn()
            // The program's path may come from a PATH set by a secret: name the command only.
            .map_err(|e| exec_error(&self.argv[0], Path::new(&self.argv[0]), e))?;
        let pid = child.id() as i32;
        if self.tty {
            give_terminal(pid);
        }
        log::info(
            "child started",
            &[("pid", &pid.to_string()), ("command", &self.argv[0])],
        );
        Ok(pid)
    }

    fn send(&self, sig: i32) {
        // SAFETY: kill with a child pid and a signal number.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// How long until a timer of ours (SIGKILL after --grace, a held-back restart) is due.
    fn timer(&self) -> Duration {
        let now = Instant::now();
        match (self.state, self.restart_pending, self.last_restart) {
            (State::Restarting(kill_at), _, _) => kill_at.saturating_duration_since(now),
            (State::Running, true, Some(t)) => (t + RESTART_MIN_GAP).saturating_duration_since(now),
            _ => Duration::from_secs(3600),
        }
    }

    fn tick(&mut self) {
        if let State::Restarting(kill_at) = self.state
            && Instant::now() >= kill_at
        {
            log::warn(
                "child ignored SIGTERM for --grace; sending SIGKILL",
                &[("pid", &self.pid.to_string())],
            );
            self.send(libc::SIGKILL);
        }
        self.maybe_restart();
    }

    fn changed(&mut self, names: &[String]) {
        match self.opts.on_change {
            OnChange::Restart => {
                self.restart_pending = true;
                self.maybe_restart();
            }
            OnChange::Signal(sig) => {
                log::info(
                    "secrets changed; signalling the child",
                    &[("changed", &names.join(",")), ("signal", &sig.to_string())],
                );
                self.send(sig);
            }
            OnChange::Nothing => {}
        }
    }

    fn maybe_restart(&mut self) {
        let spaced = self
            .last_restart
            .is_none_or(|t| t.elapsed() >= RESTART_MIN_GAP);
        if self.state == State::Running && self.restart_pending && spaced {
            log::info(
                "secrets changed; restarting the child",
                &[("pid", &self.pid.to_string())],
            );
            self.restart_pending = false;
            self.last_restart = Some(Instant::now());
            self.state = State::Restarting(Instant::now() + self.opts.grace);
            self.send(libc::SIGTERM);
        }
    }

    /// Reap every exited child (orphans included). `Some(code)` when the supervised child ended
    /// by itself: kvfetch ends with its status.
    fn reap(&mut self, refresher: &Refresher) -> Result<Option<u8>, Error> {
        for (pid, status) in reap_all() {
            if pid != self.pid {
                continue;
            }
            if let State::Restarting(_) = self.state {
                self.state = State::Running;
                self.pid = self.spawn(refresher)?;
                continue;
            }
            let code = exit_code(status);
            log::info(
                "child exited",
                &[("pid", &pid.to_string()), ("exit_code", &code.to_string())],
            );
            return Ok(Some(code));
        }
        Ok(None)
    }

    /// Before kvfetch itself exits (--max-stale): SIGTERM, --grace, SIGKILL.
    fn stop(&mut self) {
        self.send(libc::SIGTERM);
        let until = Instant::now() + self.opts.grace;
        while Instant::now() < until {
            if reap_all().iter().any(|(pid, _)| *pid == self.pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.send(libc::SIGKILL);
    }
}

/// Wait for every exited child without blocking.
fn reap_all() -> Vec<(i32, i32)> {
    let mut done = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return done;
        }
        done.push((pid, status));
    }
}

/// The shell's convention: the exit status, or 128+N for death by signal N.
fn exit_code(status: i32) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        (128 + libc::WTERMSIG(status)) as u8
    } else {
        1
    }
}

/// Whether kvfetch is the terminal's foreground process group.
fn holds_terminal() -> bool {
    // SAFETY: isatty/tcgetpgrp/getpgrp on fd 0.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Hand the terminal to the child's process group, so terminal signals (Ctrl-C, window size)
/// reach the child directly and only once. kvfetch ignores SIGTTOU, as it is now in the
/// background and may hand the terminal on again to a restarted child.
fn give_terminal(pid: i32) {
    // SAFETY: signal/tcsetpgrp with plain integer arguments.
    unsafe {
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, pid);
    }
}

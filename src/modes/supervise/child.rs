//! The child side of supervision: building a generation's environment and `?file` files,
//! starting it in its own process group with the terminal, signalling it and its group, and
//! the process-table walks that find and reap orphans.

use super::*;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::modes::exec::{check_exec_size, child_env, exec_error};

impl Supervisor<'_> {
    /// The command as messages name it (bytes that are not UTF-8 shown as U+FFFD).
    pub(super) fn command(&self) -> String {
        self.argv[0].to_string_lossy().into_owned()
    }

    /// The child's environment from the current secrets, checked against what `execve` takes;
    /// once it is, the files of `?file` variables are brought up to date.
    pub(super) fn env_for(&self, refresher: &Refresher) -> Result<Env, Error> {
        Self::env_of(self.argv, &self.base_env, self.files.as_ref(), refresher)
    }

    pub(super) fn env_of(
        argv: &[OsString],
        base_env: &Env,
        files: Option<&PrivateDir>,
        refresher: &Refresher,
    ) -> Result<Env, Error> {
        let snap = refresher.current.clone().unwrap_or_default();
        let (mut env, vars) = child_env(base_env, &snap.specs, &snap.values)?;
        if let Some(dir) = files {
            for (name, _) in vars.iter().filter(|(_, bytes)| bytes.is_some()) {
                env.push((name.into(), dir.file(name).into()));
            }
        }
        check_exec_size(argv, &env)?;
        if let Some(dir) = files {
            dir.write(&vars)?;
        }
        Ok(env)
    }

    /// Bring the files of `?file` variables up to date (for a child that is signalled, or
    /// left to notice, rather than restarted).
    pub(super) fn write_files(&self, refresher: &Refresher) -> Result<(), Error> {
        let Some(dir) = &self.files else {
            return Ok(());
        };
        let snap = refresher.current.clone().unwrap_or_default();
        let (_, vars) = child_env(&self.base_env, &snap.specs, &snap.values)?;
        dir.write(&vars)
    }

    /// The program can still be started: checked before the old generation is stopped.
    pub(super) fn runnable(&self) -> Result<(), Error> {
        let c = std::ffi::CString::new(self.program.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Usage("the command's path holds a NUL byte".into()))?;
        // SAFETY: access(2) with a valid NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(exec_error(&self.command(), Path::new(&self.argv[0]), e));
        }
        Ok(())
    }

    /// Start a child with `env` in its own process group.
    pub(super) fn spawn(&mut self, env: Env) -> Result<i32, Error> {
        let mut command = std::process::Command::new(&self.program);
        command
            .arg0(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(env)
            .process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec. Should kvfetch die (even
        // by SIGKILL), the child gets SIGTERM instead of running on unsupervised.
        let tty = self.tty;
        unsafe {
            command.pre_exec(move || {
                if tty {
                    // Take the terminal before the program runs, so it never reads from a
                    // terminal it does not own yet (SIGTTIN would stop it).
                    libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                    libc::tcsetpgrp(0, libc::getpid());
                }
                signals::reset_in_child();
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
                Ok(())
            });
        }
        let child = command
            .spawn()
            // The program's path may come from a PATH set by a secret: name the command only.
            .map_err(|e| exec_error(&self.command(), Path::new(&self.argv[0]), e))?;
        let pid = child.id() as i32;
        if self.tty {
            give_terminal(pid);
        }
        log::info(
            "child started",
            &[("pid", &pid.to_string()), ("command", &self.command())],
        );
        Ok(pid)
    }

    /// `send`, once the leader is reaped: only while a member is left, so that a process group
    /// id the kernel has reused for another group is never signalled.
    pub(super) fn send_while_alive(&self, sig: i32) {
        if !group_gone(self.pid) {
            self.send(sig);
        }
    }

    /// Send `sig` to the child's whole process group.
    pub(super) fn send(&self, sig: i32) {
        if self.pid > 0 {
            // SAFETY: kill with a process group id and a signal number.
            unsafe { libc::kill(-self.pid, sig) };
        }
    }
}

/// Send `sig` to every child of kvfetch but `except` (orphans re-parented to it).
pub(super) fn signal_orphans(except: i32, sig: i32) {
    for pid in children().into_iter().filter(|p| *p != except) {
        // SAFETY: kill with the pid of a live child of ours.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Whether no process is left in process group `pgid` (zombies not yet reaped count as left).
pub(super) fn group_gone(pgid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    pgid <= 0
        || (unsafe { libc::kill(-pgid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH))
}

/// The live children of kvfetch (orphans re-parented to it included), from /proc. Empty when
/// /proc belongs to another PID namespace (one entered without its own /proc mount): its pids
/// and ppids name other processes there, which are not ours to wait for or signal; kvfetch then
/// knows its child by `waitpid` alone.
pub(super) fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let ours = std::fs::read_link("/proc/self").is_ok_and(|p| p.as_os_str() == me.as_str());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    if !ours {
        return Vec::new();
    }
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command's closing parenthesis: state, ppid, …
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
            let mut fields = after.split_whitespace();
            let state = fields.next().unwrap_or("Z");
            fields.next() == Some(me.as_str()) && state != "Z"
        })
        .collect()
}

/// Wait for every exited child without blocking.
pub(super) fn reap_all() -> Vec<(i32, i32)> {
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
pub(super) fn exit_code(status: i32) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        (128 + libc::WTERMSIG(status)) as u8
    } else {
        1
    }
}

/// Whether kvfetch is the terminal's foreground process group.
pub(super) fn holds_terminal() -> bool {
    // SAFETY: isatty/tcgetpgrp/getpgrp on fd 0.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Hand the terminal to the child's process group, so terminal signals (Ctrl-C, window size)
/// reach the child directly and only once. kvfetch ignores SIGTTOU, as it is now in the
/// background and may hand the terminal on again to a restarted child (children get their
/// dispositions reset before `execve`).
pub(super) fn give_terminal(pid: i32) {
    // SAFETY: signal/tcsetpgrp with plain integer arguments.
    unsafe {
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, pid);
    }
}

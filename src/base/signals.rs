//! Signals as events: a thread turns each caught signal into a message on the mode's channel, so
//! the main loop waits on one channel for signals, fetch results and timers alike (and idles
//! without polling).
//!
//! Before a mode takes its signals over, the early handler ends the run on SIGTERM, SIGINT,
//! SIGHUP or SIGQUIT (exit 128+N): as PID 1 (a container's `ENTRYPOINT`) the kernel drops
//! signals that have no handler, so without it a first fetch that waits for a slow identity
//! endpoint could not be stopped. It is a plain signal handler (no thread, so it works under
//! any process limit), and a commit of outputs in progress finishes first: outputs are never
//! left half-committed.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::mpsc::Sender;

use signal_hook::iterator::Signals;

use crate::error::Error;

static EARLY: AtomicBool = AtomicBool::new(false);
/// 0 idle, 1 committing outputs, 2 exiting.
static STATE: AtomicU8 = AtomicU8::new(0);
/// A signal that arrived during a commit, to act on when it ends.
static PENDING: AtomicI32 = AtomicI32::new(0);

/// Held while outputs are committed: an early signal waits for the commit to end.
pub struct Writing(());

/// Mark a commit of outputs in progress (see [`Writing`]).
pub fn writing() -> Writing {
    while STATE
        .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // Exiting already (state 2): the process ends in a moment; never start a commit.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Writing(())
}

impl Drop for Writing {
    fn drop(&mut self) {
        STATE.store(0, Ordering::SeqCst);
        let sig = PENDING.swap(0, Ordering::SeqCst);
        if sig != 0 && EARLY.load(Ordering::SeqCst) {
            early_exit(sig);
        }
    }
}

fn early_signal(sig: i32) {
    if !EARLY.load(Ordering::SeqCst) {
        return;
    }
    if STATE
        .compare_exchange(0, 2, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        signal_hook::low_level::exit(128 + sig);
    }
    PENDING.store(sig, Ordering::SeqCst);
    // The commit may have ended between the attempt above and the store: then nobody will see
    // PENDING, so act on it here.
    if STATE
        .compare_exchange(0, 2, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        signal_hook::low_level::exit(128 + sig);
    }
}

fn early_exit(sig: i32) -> ! {
    STATE.store(2, Ordering::SeqCst);
    crate::base::log::flush();
    signal_hook::low_level::exit(128 + sig)
}

const ENDING: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// Catch `signals` from now on and send `wrap(signal)` for each.
pub fn forward<T: Send + 'static>(
    signals: &[i32],
    tx: Sender<T>,
    wrap: fn(i32) -> T,
) -> Result<(), Error> {
    let mut caught = Signals::new(signals).map_err(|e| {
        let msg = format!("cannot install signal handlers: {e}");
        Error::from_io(&e, Error::Other, msg)
    })?;
    spawn(move || {
        for sig in caught.forever() {
            if tx.send(wrap(sig)).is_err() {
                break;
            }
        }
    })?;
    // The mode handles signals from here on.
    EARLY.store(false, Ordering::SeqCst);
    Ok(())
}

/// Install the early handler (see the module docs); called before the first request.
pub fn install_early() -> Result<(), Error> {
    EARLY.store(true, Ordering::SeqCst);
    for sig in ENDING {
        // SAFETY: the action only touches atomics and calls _exit, all async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, move || early_signal(sig)) }
            .map_err(|e| Error::Other(format!("cannot install signal handlers: {e}")))?;
    }
    Ok(())
}

fn spawn(f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(f)
        .map(|_| ())
        .map_err(|e| {
            Error::Resource(format!(
                "cannot start the signal thread ({e}); the process or node is at its thread limit (ulimit -u, pids.max)"
            ))
        })
}

/// In a child between `fork` and `execve`: every signal back to its default action and an
/// empty signal mask, whatever kvfetch (or its own parent) ignored or blocked. Only
/// async-signal-safe calls.
pub fn reset_in_child() {
    // SAFETY: signal(2) and sigprocmask(2) are async-signal-safe; SIGKILL/SIGSTOP and numbers
    // the kernel does not know simply fail.
    unsafe {
        // Raw rt_sigaction: the C library refuses its internal signals (32, 33), which a
        // parent may still have left ignored. All zeros is SIG_DFL, no flags, an empty mask.
        let default = [0u64; 4];
        for sig in 1..65 {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                std::mem::size_of::<u64>(),
            );
        }
        // The raw system call: the C library's wrapper keeps its own internal signals
        // (32, 33) as they are, and a child must not start with them blocked either.
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            std::mem::size_of::<u64>(),
        );
    }
}

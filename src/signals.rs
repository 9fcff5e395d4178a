//! Signals as events: a thread turns each caught signal into a message on the mode's channel, so
//! the main loop waits on one channel for signals, fetch results and timers alike (and idles
//! without polling).

use std::sync::mpsc::Sender;

use signal_hook::iterator::Signals;

use crate::error::Error;

/// Catch `signals` from now on and send `wrap(signal)` for each.
pub fn forward<T: Send + 'static>(
    signals: &[i32],
    tx: Sender<T>,
    wrap: fn(i32) -> T,
) -> Result<(), Error> {
    let mut caught = Signals::new(signals)
        .map_err(|e| Error::Other(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in caught.forever() {
                if tx.send(wrap(sig)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| {
            Error::Other(format!(
                "cannot start the signal thread ({e}); the process or node is at its thread limit (ulimit -u, pids.max)"
            ))
        })?;
    Ok(())
}

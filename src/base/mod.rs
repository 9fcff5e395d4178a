//! The ground floor: what every stage uses and that knows nothing of vaults, identities or
//! outputs — log lines and the one redactor, progress while waiting, signals as events, encodings, bounded reads of named files, how alike two words are,
//! the retry clock and the run's deadline.
//!
//! May use: `error`.

pub mod encoding;
pub mod file;
pub mod log;
pub mod progress;
pub mod redact;
pub mod retry;
pub mod signals;
pub mod similar;
pub mod stamps;

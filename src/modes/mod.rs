//! The commands, each told with the stages below: `fetch` (plan, session, writing), `watch`,
//! `exec` and its supervisor, the refresh loop both share, `doctor`, and the health endpoints.
//!
//! May use every stage; no stage uses `modes`.

pub mod doctor;
pub mod exec;
pub mod fetch;
pub mod health;
pub mod refresh;
pub mod serve;
pub mod supervise;
pub mod watch;

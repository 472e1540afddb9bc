//! Test-only crash injection, for the kill -9 drills: with `SPOOLREPLAY_CRASH_AT=POINT:N`
//! the process aborts (like `kill -9`: no cleanup, no checkpoint) the Nth time it reaches
//! POINT. Points: `after-in-flight`, `after-store` (the replay), `after-dsn-record` (the
//! DSN step), `after-outbox-write` (the outbox), `after-dsn-sending`, `after-dsn-send`
//! (the relay). Without the variable it does nothing.

use std::sync::atomic::{AtomicU64, Ordering};

/// Aborts here if `SPOOLREPLAY_CRASH_AT` names this point and its count is reached.
pub fn at(point: &str) {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let Some(spec) = std::env::var_os("SPOOLREPLAY_CRASH_AT") else {
        return;
    };
    let spec = spec.to_string_lossy();
    let Some((at, n)) = spec.split_once(':') else {
        return;
    };
    if at != point {
        return;
    }
    let n: u64 = n.parse().unwrap_or(1);
    if SEEN.fetch_add(1, Ordering::SeqCst) + 1 >= n {
        std::process::abort();
    }
}

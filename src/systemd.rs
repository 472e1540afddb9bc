//! The service manager's notification protocol (`sd_notify`, for `Type=notify` units):
//! `READY=1` once the run has settled what an earlier run left in flight, `STATUS=` with
//! the progress line every few seconds, `WATCHDOG=1` at half the `WATCHDOG_USEC`
//! interval, `STOPPING=1` when a signal asks the run to stop (or it ends). Nothing at all
//! without `NOTIFY_SOCKET`. The datagrams go out from a thread of their own, so a store
//! transaction that blocks the replay loop does not silence the status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How often the status line is sent (when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How often the thread looks at the stop flag and the clock.
const POLL: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Shared {
    status: Mutex<Option<String>>,
    done: AtomicBool,
}

/// Sends the notifications of one run while it lives; `STOPPING=1` when dropped.
pub struct Notifier {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Notifier {
    /// Starts notifying if a service manager asked for it (`NOTIFY_SOCKET` is set);
    /// `stop` is the flag a signal sets.
    pub fn start(stop: Arc<AtomicBool>) -> Option<Notifier> {
        std::env::var_os("NOTIFY_SOCKET")?;
        let shared = Arc::new(Shared::default());
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let inner = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("sd_notify".into())
            .spawn(move || notify_loop(&inner, &stop, watchdog))
            .ok()?;
        Some(Notifier {
            shared,
            thread: Some(thread),
        })
    }

    /// `READY=1`: sent at once.
    pub fn ready(&self) {
        send(&[NotifyState::Ready]);
    }

    /// The latest progress line; sent within `STATUS_EVERY`.
    pub fn status(&self, line: &str) {
        if let Ok(mut s) = self.shared.status.lock() {
            *s = Some(line.to_string());
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.shared.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A lost notification is not worth failing a recovery for: systemd's own timeouts say
/// when it matters.
fn send(states: &[NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

fn notify_loop(shared: &Shared, stop: &AtomicBool, watchdog: Option<Duration>) {
    // Due at once (an Instant cannot go before the clock's start: then just now).
    let ago = |d: Duration| Instant::now().checked_sub(d).unwrap_or_else(Instant::now);
    let mut last_status = ago(STATUS_EVERY);
    let mut last_ping = ago(watchdog.unwrap_or_default());
    let mut stopping = false;
    loop {
        let done = shared.done.load(Ordering::SeqCst);
        if !stopping && (done || stop.load(Ordering::SeqCst)) {
            stopping = true;
            send(&[NotifyState::Stopping]);
        }
        if done {
            return;
        }
        if last_status.elapsed() >= STATUS_EVERY {
            last_status = Instant::now();
            let line = shared.status.lock().ok().and_then(|mut s| s.take());
            if let Some(line) = line {
                // One line: STATUS= ends at the newline.
                send(&[NotifyState::Status(&line.replace('\n', " "))]);
            }
        }
        if let Some(every) = watchdog
            && last_ping.elapsed() >= every
        {
            last_ping = Instant::now();
            send(&[NotifyState::Watchdog]);
        }
        std::thread::sleep(POLL);
    }
}

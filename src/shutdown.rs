//! Stopping on a signal: SIGINT (Ctrl-C), SIGTERM (a service manager) and SIGHUP (a
//! dropped ssh session) ask a command to stop taking new work; a second signal stops it
//! at once.
//!
//! The first signal only sets a flag that the command polls between units of work (a
//! message handed to the store, a DSN sent, a ledger commit), so what is in flight reaches
//! its final reply and is recorded. The second one ends the process inside the signal
//! handler (`_exit`, async-signal-safe) with that signal's exit code: what was in flight
//! is then settled by the next run, as after a crash.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::exit::Exit;

/// The signals that ask for a graceful stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    HangUp,
}

impl Signal {
    const ALL: [Signal; 3] = [Signal::Interrupt, Signal::Terminate, Signal::HangUp];

    fn number(self) -> i32 {
        match self {
            Signal::Interrupt => SIGINT,
            Signal::Terminate => SIGTERM,
            Signal::HangUp => SIGHUP,
        }
    }

    fn from_number(n: usize) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.number() as usize == n)
    }

    /// 128 + the signal number, as a shell reports a process killed by it.
    pub fn exit(self) -> Exit {
        match self {
            Signal::Interrupt => Exit::Interrupted,
            Signal::Terminate => Exit::Terminated,
            Signal::HangUp => Exit::HangUp,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT (Ctrl-C)",
            Signal::Terminate => "SIGTERM",
            Signal::HangUp => "SIGHUP",
        }
    }
}

/// The stop request of one command. `flag` is what the work loops poll.
pub struct Shutdown {
    requested: Arc<AtomicBool>,
    first: Arc<AtomicUsize>,
}

impl Shutdown {
    /// Installs the handlers. `finishing` says what the command does before it stops
    /// ("finishing the deliveries in flight"): it is printed when the first signal comes.
    pub fn install(finishing: &'static str) -> Result<Shutdown> {
        let requested = Arc::new(AtomicBool::new(false));
        let first = Arc::new(AtomicUsize::new(0));
        for signal in Signal::ALL {
            let n = signal.number();
            // Handlers run in the order registered: the first signal finds the flag
            // unset (no exit), records itself and sets it; a second one then exits.
            signal_hook::flag::register_conditional_shutdown(
                n,
                i32::from(signal.exit().code()),
                requested.clone(),
            )
            .and_then(|_| signal_hook::flag::register_usize(n, first.clone(), n as usize))
            .and_then(|_| signal_hook::flag::register(n, requested.clone()))
            .with_context(|| format!("cannot install a handler for {}", signal.name()))?;
        }
        // Printing is not allowed in a signal handler: a thread says what happens next.
        let mut signals = signal_hook::iterator::Signals::new(Signal::ALL.map(Signal::number))
            .context("cannot install the signal handlers")?;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(n) = signals.forever().next() {
                    let name = Signal::from_number(n as usize).map_or("a signal", Signal::name);
                    // stderr may be gone (SIGHUP after the terminal closed): ignore that.
                    let _ = writeln!(
                        std::io::stderr(),
                        "{name} received: {finishing}, then stopping (a second signal stops at once)"
                    );
                }
            })
            .context("cannot start the signal thread")?;
        Ok(Shutdown { requested, first })
    }

    /// Set once a stop was asked for.
    pub fn flag(&self) -> &AtomicBool {
        &self.requested
    }

    /// The flag, for a thread that outlives this borrow (the systemd notifier).
    pub fn shared_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.requested)
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The signal that asked for the stop, if one did.
    pub fn signal(&self) -> Option<Signal> {
        if !self.requested() {
            return None;
        }
        Signal::from_number(self.first.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::Signal;

    #[test]
    fn each_signal_exits_with_128_plus_its_number_as_a_shell_reports_it() {
        for s in Signal::ALL {
            assert_eq!(i32::from(s.exit().code()), 128 + s.number(), "{s:?}");
            assert_eq!(Signal::from_number(s.number() as usize), Some(s));
        }
        assert_eq!(Signal::Terminate.exit().code(), 143);
        assert_eq!(Signal::HangUp.exit().code(), 129);
        assert_eq!(Signal::Interrupt.exit().code(), 130);
        assert_eq!(Signal::from_number(0), None);
    }
}

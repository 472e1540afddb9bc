//! The store circuit breaker: a store that answers every recipient with the same kind of
//! temporary refusal (a misconfigured store's `451 4.3.0 Temporary internal error`,
//! quota on every mailbox) is unhealthy as a whole, not busy. When the last `recipients`
//! consecutive recipient replies were all 4xx, across at least `mailboxes` distinct
//! mailboxes, the breaker opens: the run waits as for an unreachable store and probes
//! with one message at a time; the first reply that is not a 4xx closes it again.
//!
//! Pure: replies and times come in as values, nothing here does IO.

use std::collections::BTreeSet;

/// When the breaker opens. `recipients == 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub recipients: usize,
    pub mailboxes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            recipients: 20,
            mailboxes: 5,
        }
    }
}

/// One recipient's reply, as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A 4xx from the store, with its text.
    Transient(&'a str),
    /// Anything else the store answered (2xx, 5xx): it is working.
    Answered,
}

/// The breaker opened: what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    /// The last refusal.
    pub reply: String,
    /// Consecutive recipients refused so far.
    pub recipients: usize,
    /// Distinct mailboxes among them.
    pub mailboxes: usize,
    /// When the first of them was refused (as the caller stamped it).
    pub since: String,
}

#[derive(Debug, Default)]
pub struct Breaker {
    config: BreakerConfig,
    streak: usize,
    mailboxes: BTreeSet<String>,
    since: Option<String>,
    last: String,
    open: bool,
}

/// What a reply changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It just opened.
    Opened(Trip),
    /// It was open and the store answered: closed again.
    Closed,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            ..Breaker::default()
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The current streak, while open.
    pub fn trip(&self) -> Option<Trip> {
        self.open.then(|| Trip {
            reply: self.last.clone(),
            recipients: self.streak,
            mailboxes: self.mailboxes.len(),
            since: self.since.clone().unwrap_or_default(),
        })
    }

    /// Feeds one recipient's reply; `mailbox` is its address, `at` when it was tried.
    pub fn observe(&mut self, mailbox: &str, reply: Reply<'_>, at: &str) -> Option<Change> {
        if self.config.recipients == 0 {
            return None;
        }
        match reply {
            Reply::Answered => {
                let was_open = self.open;
                self.streak = 0;
                self.mailboxes.clear();
                self.since = None;
                self.open = false;
                was_open.then_some(Change::Closed)
            }
            Reply::Transient(text) => {
                self.streak += 1;
                // Bounded: only whether `mailboxes` distinct ones were seen matters.
                if self.mailboxes.len() < self.config.mailboxes.max(1) {
                    self.mailboxes.insert(mailbox.to_ascii_lowercase());
                }
                self.since.get_or_insert_with(|| at.to_string());
                self.last = text.to_string();
                if !self.open
                    && self.streak >= self.config.recipients
                    && self.mailboxes.len() >= self.config.mailboxes
                {
                    self.open = true;
                    return self.trip().map(Change::Opened);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: Reply<'static> = Reply::Transient("451 4.3.0 Temporary internal error");

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            recipients: 4,
            mailboxes: 3,
        })
    }

    #[test]
    fn opens_after_n_refusals_across_m_mailboxes_and_says_since_when() {
        let mut b = breaker();
        for (i, m) in ["a@x", "b@x", "c@x"].iter().enumerate() {
            assert_eq!(b.observe(m, REFUSED, &format!("t{i}")), None);
        }
        let Some(Change::Opened(trip)) = b.observe("a@x", REFUSED, "t3") else {
            panic!("not opened");
        };
        assert_eq!(
            trip,
            Trip {
                reply: "451 4.3.0 Temporary internal error".into(),
                recipients: 4,
                mailboxes: 3,
                since: "t0".into(),
            }
        );
        assert!(b.is_open());
        // Still open: no second announcement.
        assert_eq!(b.observe("d@x", REFUSED, "t4"), None);
        assert_eq!(
            b.observe("d@x", Reply::Answered, "t5"),
            Some(Change::Closed)
        );
        assert!(!b.is_open());
    }

    #[test]
    fn one_full_mailbox_does_not_open_it() {
        let mut b = breaker();
        for i in 0..50 {
            assert_eq!(b.observe("full@x", REFUSED, &format!("t{i}")), None);
        }
        assert!(!b.is_open());
    }

    #[test]
    fn an_answer_in_between_starts_the_count_again() {
        let mut b = breaker();
        for m in ["a@x", "b@x", "c@x"] {
            b.observe(m, REFUSED, "t");
        }
        b.observe("d@x", Reply::Answered, "t");
        for m in ["a@x", "b@x", "c@x"] {
            assert_eq!(b.observe(m, REFUSED, "t"), None);
        }
        assert!(!b.is_open());
    }

    #[test]
    fn zero_turns_it_off() {
        let mut b = Breaker::new(BreakerConfig {
            recipients: 0,
            mailboxes: 0,
        });
        for i in 0..100 {
            assert_eq!(b.observe(&format!("{i}@x"), REFUSED, "t"), None);
        }
        assert!(!b.is_open());
    }
}

//! The per-recipient state machine. Every change goes through `RcptState::check_transition`
//! and is written to the `events` table (the audit trail).

use std::fmt;
use std::str::FromStr;

/// Where one recipient of one message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RcptState {
    /// Ingested; no decision yet, or released for delivery.
    Pending,
    /// Handed to the store; the outcome is not yet recorded. After a crash such rows are
    /// completed first (see `replay::Replay::run`, which settles in-flight work).
    InFlight,
    Delivered,
    /// The store refused for now; retried by the next run.
    Deferred,
    /// Will not be delivered (expired, bounced by the incident policy, refused by the store);
    /// a DSN is owed.
    Failed,
    /// Failed, and the DSN was made.
    Bounced,
    /// Kept back by the incident policy or by the operator; not pending work.
    Held,
    /// Failed, but no DSN is sent (null sender); recorded only.
    Dropped,
    /// An exact copy (same content) of a message already in the ledger for this recipient
    /// (spooled twice, or copied from two MX hosts): the first copy's fate covers it.
    Duplicate,
    /// The MTA had delivered it before the spool was copied (Postfix `D` record, Exim
    /// delivered list): recorded, never replayed.
    DeliveredBefore,
    /// The store may or may not have it: the connection was lost after the message was
    /// sent and before the reply, or a run died then. `--uncertain` decides what follows.
    Uncertain,
}

pub const ALL_STATES: [RcptState; 11] = [
    RcptState::Pending,
    RcptState::InFlight,
    RcptState::Delivered,
    RcptState::Deferred,
    RcptState::Failed,
    RcptState::Bounced,
    RcptState::Held,
    RcptState::Dropped,
    RcptState::Uncertain,
    RcptState::DeliveredBefore,
    RcptState::Duplicate,
];

/// Illegal state change: a bug, or a ledger edited by hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recipient state cannot go from {from} to {to}")]
pub struct BadTransition {
    pub from: RcptState,
    pub to: RcptState,
}

impl RcptState {
    pub fn as_str(self) -> &'static str {
        match self {
            RcptState::Pending => "pending",
            RcptState::InFlight => "in_flight",
            RcptState::Delivered => "delivered",
            RcptState::Deferred => "deferred",
            RcptState::Failed => "failed",
            RcptState::Bounced => "bounced",
            RcptState::Held => "held",
            RcptState::Dropped => "dropped",
            RcptState::Uncertain => "uncertain",
            RcptState::DeliveredBefore => "delivered_before",
            RcptState::Duplicate => "duplicate",
        }
    }

    /// The state as an SQL string literal, for queries that name states: the names come
    /// from `as_str` alone (lowercase letters and `_`), so quoting them needs no escaping.
    pub(super) fn sql(self) -> String {
        format!("'{}'", self.as_str())
    }

    /// States a `run` still has to work on (the exit code is 75 while any remain).
    pub fn is_open_work(self) -> bool {
        matches!(
            self,
            RcptState::Pending | RcptState::InFlight | RcptState::Deferred | RcptState::Failed
        )
    }

    /// States that classification may still change (a decision, not an outcome).
    pub fn is_undecided(self) -> bool {
        matches!(
            self,
            RcptState::Pending | RcptState::Deferred | RcptState::Held
        )
    }

    /// The transitions the tool makes. Terminal states (delivered, bounced, dropped) have none.
    pub fn check_transition(self, to: RcptState) -> Result<(), BadTransition> {
        use RcptState::*;
        let allowed = match self {
            // Duplicate: another ledger of the cluster has (or is delivering) this copy.
            Pending => matches!(to, InFlight | Held | Failed | Dropped | Duplicate),
            Deferred => matches!(to, InFlight | Held | Failed | Dropped | Duplicate),
            Held => matches!(to, Pending | Failed | Dropped),
            InFlight => matches!(to, Delivered | Deferred | Failed | Held | Uncertain),
            Failed => matches!(to, Bounced | Dropped),
            // Redelivered (a possible duplicate) or kept for the operator, per --uncertain;
            // in flight again when `verify` looks for it in the store.
            Uncertain => matches!(to, Pending | Held | InFlight),
            Delivered | Bounced | Dropped | DeliveredBefore | Duplicate => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(BadTransition { from: self, to })
        }
    }
}

impl fmt::Display for RcptState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RcptState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_STATES
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown recipient state `{s}` in the ledger"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State names in the ledger's queries come from `RcptState` (bound or `sql()`), so a
    /// renamed state cannot leave a query matching nothing. Only the migrations (history,
    /// never edited) and test fixtures may spell them.
    #[test]
    fn queries_take_state_names_from_the_enum() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ledger");
        let mut read = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == "schema.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for state in ALL_STATES {
                let literal = format!("'{}'", state.as_str());
                assert!(
                    !code.contains(&literal),
                    "{} spells {literal} in SQL: use RcptState::{state:?}",
                    path.display()
                );
            }
            read += 1;
        }
        assert!(read > 5, "read only {read} files in {}", dir.display());
    }

    #[test]
    fn terminal_states_never_move() {
        for from in [
            RcptState::Delivered,
            RcptState::Bounced,
            RcptState::Dropped,
            RcptState::DeliveredBefore,
            RcptState::Duplicate,
        ] {
            for to in ALL_STATES {
                assert!(from.check_transition(to).is_err(), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn open_work_may_become_another_ledgers_duplicate() {
        for from in [RcptState::Pending, RcptState::Deferred] {
            assert!(
                from.check_transition(RcptState::Duplicate).is_ok(),
                "{from}"
            );
        }
        for from in [
            RcptState::InFlight,
            RcptState::Delivered,
            RcptState::Uncertain,
        ] {
            assert!(
                from.check_transition(RcptState::Duplicate).is_err(),
                "{from}"
            );
        }
    }

    #[test]
    fn delivery_path_is_allowed() {
        assert!(
            RcptState::Pending
                .check_transition(RcptState::InFlight)
                .is_ok()
        );
        assert!(
            RcptState::InFlight
                .check_transition(RcptState::Delivered)
                .is_ok()
        );
        assert!(
            RcptState::Failed
                .check_transition(RcptState::Bounced)
                .is_ok()
        );
        assert!(
            RcptState::Pending
                .check_transition(RcptState::Delivered)
                .is_err()
        );
        assert!(
            RcptState::Pending
                .check_transition(RcptState::Bounced)
                .is_err()
        );
    }

    #[test]
    fn names_round_trip() {
        for st in ALL_STATES {
            assert_eq!(st.as_str().parse::<RcptState>(), Ok(st));
        }
        assert!("gone".parse::<RcptState>().is_err());
    }
}

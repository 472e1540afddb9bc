//! Steering a running `run` without restarting it: `spoolreplay control` appends a
//! request row (pause, resume, rate N/s) and the run polls for rows newer than the last it
//! obeyed. The row is the message: no signal, no socket, works wherever the ledger is.

use anyhow::{Context, Result};
use rusqlite::params;

use super::{Ledger, timestamp};

/// One request, as `control` wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steer {
    Pause,
    Resume,
    /// A new ceiling for the pace, as typed (`50/s`).
    Rate(String),
}

impl Ledger {
    /// Appends a request; returns its id.
    pub fn request_steering(&self, steer: &Steer) -> Result<i64> {
        let (command, rate) = match steer {
            Steer::Pause => ("pause", None),
            Steer::Resume => ("resume", None),
            Steer::Rate(r) => ("rate", Some(r.as_str())),
        };
        self.conn
            .execute(
                "INSERT INTO steering (requested_at, command, rate) VALUES (?1, ?2, ?3)",
                params![timestamp(), command, rate],
            )
            .with_context(|| format!("cannot write to ledger `{}`", self.path.display()))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The newest request id (0: none); a run starts obeying after it.
    pub fn last_steering_id(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(max(id), 0) FROM steering", [], |r| {
                r.get(0)
            })?)
    }

    /// Requests after `after_id`, oldest first, with their ids.
    pub fn steering_after(&self, after_id: i64) -> Result<Vec<(i64, Steer)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, command, rate FROM steering WHERE id > ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![after_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, command, rate) = row?;
            let steer = match (command.as_str(), rate) {
                ("pause", _) => Steer::Pause,
                ("resume", _) => Steer::Resume,
                ("rate", Some(r)) => Steer::Rate(r),
                _ => continue,
            };
            out.push((id, steer));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_back_in_order_after_an_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("l.db");
        let ledger = Ledger::open_for_write(&path, "test").expect("ledger");
        let before = ledger.last_steering_id().expect("id");
        let other = Ledger::open_for_steering(&path).expect("open without the lock");
        other.request_steering(&Steer::Pause).expect("pause");
        other
            .request_steering(&Steer::Rate("5/s".into()))
            .expect("rate");
        let got: Vec<Steer> = ledger
            .steering_after(before)
            .expect("read")
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(got, vec![Steer::Pause, Steer::Rate("5/s".into())]);
    }
}

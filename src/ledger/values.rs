//! How typed values are stored: RFC 3461 NOTIFY and RET as their wire spelling, decoded
//! once here when a row is read, so no caller parses a stored string again.
//!
//! A stored value that does not parse is an error naming the column's value, not a value
//! read as absent: the ledger only ever holds what `Display` wrote.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::rfc3461::{Notify, ReturnContent};

impl ToSql for Notify {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

/// `""` is what earlier versions wrote for a NOTIFY with no keyword: an empty set.
impl FromSql for Notify {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Notify> {
        let text = value.as_str()?;
        if text.is_empty() {
            return Ok(Notify::default());
        }
        text.parse()
            .map_err(|e: String| FromSqlError::Other(format!("notify `{text}` {e}").into()))
    }
}

impl ToSql for ReturnContent {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for ReturnContent {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<ReturnContent> {
        let text = value.as_str()?;
        text.parse()
            .map_err(|e: String| FromSqlError::Other(format!("ret {e}").into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: ToSql + FromSql>(value: &T) -> rusqlite::Result<T> {
        let conn = rusqlite::Connection::open_in_memory()?;
        conn.query_row("SELECT ?1", [value], |r| r.get(0))
    }

    #[test]
    fn values_come_back_as_written() {
        let notify: Notify = "FAILURE,DELAY".parse().unwrap();
        assert_eq!(round_trip(&notify).unwrap(), notify);
        assert_eq!(round_trip(&Notify::default()).unwrap(), Notify::default());
        for ret in [ReturnContent::Full, ReturnContent::Headers] {
            assert_eq!(round_trip(&ret).unwrap(), ret);
        }
    }

    #[test]
    fn a_value_that_does_not_parse_is_an_error_not_absent() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let err = conn
            .query_row("SELECT 'SOMETIMES'", [], |r| r.get::<_, Notify>(0))
            .unwrap_err();
        assert!(err.to_string().contains("SOMETIMES"), "{err}");
        let err = conn
            .query_row("SELECT 'BODY'", [], |r| r.get::<_, ReturnContent>(0))
            .unwrap_err();
        assert!(err.to_string().contains("BODY"), "{err}");
    }
}

//! Named tables of typed cells (the sections of `report`) written as a padded text table,
//! CSV, or JSON Lines, from one definition (a row is an `Event`: its fields for JSON, its
//! `cells` for the others), so the three formats always agree and the column names are
//! the documented ones.
//!
//! Rows stream: CSV and JSON write each row at once; a text table buffers its first
//! `WIDTH_SAMPLE` rows to size the columns and streams the rest at those widths, so a
//! million-row section needs no more memory than a thousand-row one.

use std::io::{self, Write};
use std::time::Duration;

use crate::report::event::Event;
use crate::report::table::{human_bytes, padded_line};
use crate::sanitize::for_terminal;
use crate::throttle::format_duration;

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            other => Err(format!("`{other}` is not one of table, json, csv")),
        }
    }
}

/// One value. The type decides how each format shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    /// Text that may be absent (JSON null, an empty CSV field, `-` in a table).
    MaybeText(Option<String>),
    Count(u64),
    /// A number of bytes: human units in a table, the exact number elsewhere.
    Bytes(u64),
    /// A duration in whole seconds: `3d4h5m` in a table, the number elsewhere.
    Seconds(Option<i64>),
    /// A duration to the millisecond: `4s60ms` in a table, seconds with three decimals
    /// elsewhere.
    Duration(Option<Duration>),
}

impl Cell {
    pub fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }

    fn for_table(&self) -> String {
        match self {
            Cell::Text(s) => for_terminal(s).into_owned(),
            Cell::MaybeText(Some(s)) => for_terminal(s).into_owned(),
            Cell::MaybeText(None) | Cell::Seconds(None) | Cell::Duration(None) => "-".into(),
            Cell::Duration(Some(d)) => format_duration(*d),
            Cell::Count(n) => n.to_string(),
            Cell::Bytes(n) => human_bytes(*n),
            Cell::Seconds(Some(s)) => format_duration(Duration::from_secs((*s).max(0) as u64)),
        }
    }

    fn for_csv(&self) -> String {
        match self {
            Cell::Text(s) | Cell::MaybeText(Some(s)) => csv_field(s),
            Cell::MaybeText(None) | Cell::Seconds(None) | Cell::Duration(None) => String::new(),
            Cell::Count(n) | Cell::Bytes(n) => n.to_string(),
            Cell::Seconds(Some(s)) => s.to_string(),
            Cell::Duration(Some(d)) => format!("{:.3}", d.as_secs_f64()),
        }
    }

    fn is_numeric(&self) -> bool {
        matches!(
            self,
            Cell::Count(_) | Cell::Bytes(_) | Cell::Seconds(_) | Cell::Duration(_)
        )
    }
}

/// A CSV field by RFC 4180: quoted when it holds a comma, quote or line break. Control
/// characters are shown escaped (CSV is often read on a terminal), and a leading `=`, `+`,
/// `-` or `@` is prefixed with `'` so a spreadsheet never runs text from mail as a formula.
pub fn csv_field(s: &str) -> String {
    let s = for_terminal(s).into_owned();
    let guarded = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// Where a report's sections go: a writer that knows whether anything went out yet, so
/// CSV sections are separated by an empty line with none before the first (a CSV file
/// that starts with an empty line reads as an empty first record).
pub trait Sink: Write {
    fn started(&self) -> bool;
}

/// A `Sink` over any writer.
pub struct Tracked<W> {
    inner: W,
    started: bool,
}

impl<W: Write> Tracked<W> {
    pub fn new(inner: W) -> Tracked<W> {
        Tracked {
            inner,
            started: false,
        }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Tracked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.started |= n > 0;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Sink for Tracked<W> {
    fn started(&self) -> bool {
        self.started
    }
}

/// A column's header in a text table. A `NAME_seconds` column holds a duration, which a
/// table shows for people (`4d23h16m`), so its header there is `NAME`: a column named
/// seconds would have to show seconds. JSON and CSV keep the name and the number.
fn table_header(column: &str) -> &str {
    column
        .strip_suffix("_seconds")
        .filter(|name| !name.is_empty())
        .unwrap_or(column)
}

/// Rows a text table reads before fixing its column widths.
const WIDTH_SAMPLE: usize = 1000;

/// Writes one section. `kind` is the JSON `type` and the CSV `table` column; `title` heads
/// the text table.
pub struct SheetWriter<'w> {
    out: &'w mut dyn Sink,
    format: Format,
    kind: String,
    columns: Vec<String>,
    /// Table only: rows waiting for the widths, and the widths once fixed.
    pending: Vec<Vec<Cell>>,
    widths: Option<Vec<usize>>,
    numeric: Vec<bool>,
    rows: u64,
}

impl<'w> SheetWriter<'w> {
    pub fn begin(
        out: &'w mut dyn Sink,
        format: Format,
        kind: &str,
        title: &str,
        columns: &[&str],
    ) -> io::Result<SheetWriter<'w>> {
        match format {
            Format::Table => writeln!(out, "\n{title}")?,
            Format::Csv => {
                let header: Vec<String> = std::iter::once("table")
                    .chain(columns.iter().copied())
                    .map(csv_field)
                    .collect();
                if out.started() {
                    writeln!(out)?;
                }
                writeln!(out, "{}", header.join(","))?;
            }
            Format::Json => {}
        }
        Ok(SheetWriter {
            out,
            format,
            kind: kind.to_string(),
            columns: columns
                .iter()
                .map(|c| match format {
                    Format::Table => table_header(c).to_string(),
                    Format::Json | Format::Csv => c.to_string(),
                })
                .collect(),
            pending: Vec::new(),
            widths: None,
            numeric: vec![false; columns.len()],
            rows: 0,
        })
    }

    /// One row: the event for JSON, its cells for a table and CSV.
    pub fn row(&mut self, event: &Event<'_>) -> io::Result<()> {
        if self.format != Format::Json {
            return self.plain_row(event.cells());
        }
        self.rows += 1;
        let value = serde_json::to_value(event).map_err(io::Error::other)?;
        debug_assert!(
            self.names(&value),
            "section `{}` has columns {:?}, its event {value}",
            self.kind,
            self.columns
        );
        serde_json::to_writer(&mut *self.out, &value)?;
        self.out.write_all(b"\n")
    }

    /// Whether an event is this section's: its type the section's name, its fields the
    /// columns.
    fn names(&self, value: &serde_json::Value) -> bool {
        let Some(obj) = value.as_object() else {
            return false;
        };
        let mut keys: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "type")
            .collect();
        let mut columns: Vec<&str> = self.columns.iter().map(String::as_str).collect();
        keys.sort_unstable();
        columns.sort_unstable();
        obj.get("type").and_then(|t| t.as_str()) == Some(self.kind.as_str()) && keys == columns
    }

    /// A row that is no event (the CSV summary's `key,value` rows): nothing in JSON.
    pub fn plain_row(&mut self, cells: Vec<Cell>) -> io::Result<()> {
        debug_assert_eq!(cells.len(), self.columns.len(), "{}", self.kind);
        match self.format {
            Format::Json => Ok(()),
            Format::Csv => {
                self.rows += 1;
                let line: Vec<String> = std::iter::once(csv_field(&self.kind))
                    .chain(cells.iter().map(Cell::for_csv))
                    .collect();
                writeln!(self.out, "{}", line.join(","))
            }
            Format::Table => {
                self.rows += 1;
                for (n, c) in self.numeric.iter_mut().zip(&cells) {
                    *n |= c.is_numeric();
                }
                if self.widths.is_some() {
                    let line = self.line(&cells.iter().map(Cell::for_table).collect::<Vec<_>>());
                    return self.out.write_all(line.as_bytes());
                }
                self.pending.push(cells);
                if self.pending.len() >= WIDTH_SAMPLE {
                    self.flush_table()?;
                }
                Ok(())
            }
        }
    }

    /// Ends the section; says "none" in a text table without rows.
    pub fn finish(mut self) -> io::Result<u64> {
        if self.format == Format::Table {
            if self.rows == 0 {
                writeln!(self.out, "  none")?;
            } else if self.widths.is_none() {
                self.flush_table()?;
            }
        }
        Ok(self.rows)
    }

    fn flush_table(&mut self) -> io::Result<()> {
        let rendered: Vec<Vec<String>> = self
            .pending
            .drain(..)
            .map(|r| r.iter().map(Cell::for_table).collect())
            .collect();
        let widths = (0..self.columns.len())
            .map(|i| {
                rendered
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .chain(std::iter::once(self.columns[i].chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        self.widths = Some(widths);
        let header = self.line(&self.columns.clone());
        let rule: Vec<String> = self
            .widths
            .iter()
            .flatten()
            .map(|w| "-".repeat(*w))
            .collect();
        let rule = self.line(&rule);
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(rule.as_bytes())?;
        for r in rendered {
            let line = self.line(&r);
            self.out.write_all(line.as_bytes())?;
        }
        Ok(())
    }

    /// One padded line: numbers right-aligned, text left-aligned, no trailing spaces.
    fn line(&self, cells: &[String]) -> String {
        padded_line(cells, self.widths.as_deref().unwrap_or(&[]), &self.numeric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(format: Format, rows: &[Vec<Cell>]) -> String {
        let mut buf = Tracked::new(Vec::new());
        let mut w =
            SheetWriter::begin(&mut buf, format, "thing", "Things", &["name", "size"]).unwrap();
        for r in rows {
            w.plain_row(r.clone()).unwrap();
        }
        w.finish().unwrap();
        String::from_utf8(buf.into_inner()).unwrap()
    }

    fn ledger_rows() -> [Event<'static>; 2] {
        [
            Event::Ledger {
                ledger: "a,\"b\"",
                shard: "=cmd()",
                messages: 3_200_000,
            },
            Event::Ledger {
                ledger: "c",
                shard: "whole spools",
                messages: 7,
            },
        ]
    }

    fn render_events(format: Format, columns: &[&str]) -> String {
        let mut buf = Tracked::new(Vec::new());
        let mut w = SheetWriter::begin(&mut buf, format, "ledger", "Ledgers", columns).unwrap();
        for e in ledger_rows() {
            w.row(&e).unwrap();
        }
        w.finish().unwrap();
        String::from_utf8(buf.into_inner()).unwrap()
    }

    fn rows() -> Vec<Vec<Cell>> {
        vec![
            vec![Cell::text("a,\"b\""), Cell::Bytes(3_200_000)],
            vec![Cell::text("=cmd()"), Cell::Bytes(7)],
        ]
    }

    #[test]
    fn one_definition_three_formats() {
        assert_eq!(
            render(Format::Table, &rows()),
            "\nThings\nname      size\n------  ------\na,\"b\"   3.2 MB\n=cmd()     7 B\n"
        );
        assert_eq!(
            render(Format::Csv, &rows()),
            "table,name,size\nthing,\"a,\"\"b\"\"\",3200000\nthing,'=cmd(),7\n"
        );
        assert_eq!(render(Format::Json, &rows()), "");
        assert_eq!(render(Format::Table, &[]), "\nThings\n  none\n");
    }

    #[test]
    fn an_event_row_is_its_fields_in_json_and_its_cells_elsewhere() {
        let columns = ["ledger", "shard", "messages"];
        assert_eq!(
            render_events(Format::Json, &columns),
            "{\"ledger\":\"a,\\\"b\\\"\",\"messages\":3200000,\"shard\":\"=cmd()\",\"type\":\"ledger\"}\n\
             {\"ledger\":\"c\",\"messages\":7,\"shard\":\"whole spools\",\"type\":\"ledger\"}\n"
        );
        assert_eq!(
            render_events(Format::Csv, &columns),
            "table,ledger,shard,messages\nledger,\"a,\"\"b\"\"\",'=cmd(),3200000\nledger,c,whole spools,7\n"
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    fn a_section_whose_columns_are_not_its_fields_is_caught() {
        let caught = std::panic::catch_unwind(|| render_events(Format::Json, &["ledger", "shard"]));
        assert!(caught.is_err());
    }

    #[test]
    fn a_seconds_column_is_named_for_what_a_table_shows() {
        let mut buf = Tracked::new(Vec::new());
        let mut w = SheetWriter::begin(
            &mut buf,
            Format::Table,
            "t",
            "T",
            &["who", "worst_delay_seconds"],
        )
        .unwrap();
        w.plain_row(vec![Cell::text("a"), Cell::Seconds(Some(90_061))])
            .unwrap();
        w.finish().unwrap();
        assert_eq!(
            String::from_utf8(buf.into_inner()).unwrap(),
            "\nT\nwho  worst_delay\n---  -----------\na       1d1h1m1s\n"
        );
        assert_eq!(table_header("seconds"), "seconds");
        assert_eq!(
            render(Format::Csv, &[vec![Cell::text("x"), Cell::Count(1)]]),
            "table,name,size\nthing,x,1\n"
        );
    }

    #[test]
    fn csv_sections_are_separated_by_an_empty_line_and_the_first_has_none() {
        let mut buf = Tracked::new(Vec::new());
        for kind in ["a", "b"] {
            let mut w = SheetWriter::begin(&mut buf, Format::Csv, kind, "", &["n"]).unwrap();
            w.plain_row(vec![Cell::Count(1)]).unwrap();
            w.finish().unwrap();
        }
        assert_eq!(
            String::from_utf8(buf.into_inner()).unwrap(),
            "table,n\na,1\n\ntable,n\nb,1\n"
        );
    }

    #[test]
    fn a_long_table_streams_at_the_sampled_widths() {
        let many: Vec<Vec<Cell>> = (0..WIDTH_SAMPLE + 2)
            .map(|i| vec![Cell::text(format!("r{i}")), Cell::Count(i as u64)])
            .collect();
        let text = render(Format::Table, &many);
        assert_eq!(text.lines().count(), 4 + WIDTH_SAMPLE + 2);
        assert!(
            text.ends_with("r1001  1001\n"),
            "{}",
            &text[text.len() - 40..]
        );
    }
}

//! Plain-text tables for people: columns padded to width, numbers right-aligned.

/// A table under construction.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    numeric: Vec<bool>,
}

impl Table {
    /// `headers` ending in `#` are numeric columns (right-aligned); the `#` is dropped.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            numeric: headers.iter().map(|h| h.ends_with('#')).collect(),
            headers: headers
                .iter()
                .map(|h| h.trim_end_matches('#').to_string())
                .collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain(std::iter::once(self.headers[i].chars().count()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let line = |cells: &[String]| padded_line(cells, &widths, &self.numeric);
        let mut out = line(&self.headers);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

/// Bytes in a human unit.
/// One table line: numbers right-aligned, text left-aligned, columns two spaces apart,
/// no trailing spaces.
pub fn padded_line(cells: &[String], widths: &[usize], numeric: &[bool]) -> String {
    let mut out = String::new();
    for (i, w) in widths.iter().enumerate() {
        let cell = cells.get(i).map(String::as_str).unwrap_or("");
        let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
        if i > 0 {
            out.push_str("  ");
        }
        if numeric.get(i).copied().unwrap_or(false) {
            out.push_str(&pad);
            out.push_str(cell);
        } else {
            out.push_str(cell);
            out.push_str(&pad);
        }
    }
    out.trim_end().to_string() + "\n"
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `n` things over `elapsed`, per second, for summaries (`0` when nothing happened).
pub fn per_second(n: u64, elapsed: std::time::Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if n == 0 || secs <= 0.0 {
        "0".into()
    } else {
        format!("{:.1}", n as f64 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&["name", "count#"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["long name".into(), "1000".into()]);
        assert_eq!(
            t.render(),
            "name       count\n---------  -----\na              1\nlong name   1000\n"
        );
    }

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(3_200_000), "3.2 MB");
    }
}

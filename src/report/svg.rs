//! Charts as inline SVG, drawn by hand: a stacked column chart with marked instants (the
//! incident timeline), a column histogram and horizontal bars. Pure functions from values
//! to markup; every element a test looks for carries a `class` and `data-*` attributes, and
//! every piece of text is escaped.

use std::fmt::Write;

/// Text for HTML or SVG: `& < > " '` escaped, control characters dropped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// One stacked series of a column chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: String,
    /// One value per slot.
    pub values: Vec<u64>,
}

/// A vertical line at a fractional slot position, labelled.
#[derive(Debug, Clone)]
pub struct Marker {
    pub at_slot: f64,
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct StackedChart {
    pub title: String,
    /// One label per slot (shown as a tooltip and in `data-slot`).
    pub slots: Vec<String>,
    /// Slots that get an axis label, with the label.
    pub ticks: Vec<(usize, String)>,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
}

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;

/// Columns stacked per slot; only non-zero values get a bar (`rect.bar`), one `g.series`
/// per series, one `line.boundary` per marker.
pub fn stacked_columns(chart: &StackedChart, height: f64) -> String {
    let n = chart.slots.len().max(1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = height - TOP - BOTTOM;
    let slot_w = plot_w / n as f64;
    let totals: Vec<u64> = (0..n)
        .map(|i| chart.series.iter().map(|s| value(s, i)).sum())
        .collect();
    let max = nice_max(totals.iter().copied().max().unwrap_or(0));
    let y = |v: u64| TOP + plot_h - plot_h * v as f64 / max as f64;
    let mut svg = open_svg(&chart.title, height);
    axes(&mut svg, max, plot_h, &y);
    let mut base = vec![0u64; n];
    for s in &chart.series {
        let _ = write!(
            svg,
            r#"<g class="series" data-series="{}" fill="{}">"#,
            escape(&s.name),
            escape(&s.color)
        );
        for (i, b) in base.iter_mut().enumerate() {
            let v = value(s, i);
            if v == 0 {
                continue;
            }
            let top = y(*b + v);
            let h = y(*b) - top;
            let _ = write!(
                svg,
                r#"<rect class="bar" data-series="{name}" data-slot="{slot}" data-count="{v}" x="{x:.1}" y="{top:.1}" width="{w:.1}" height="{h:.1}"><title>{slot} {name}: {v}</title></rect>"#,
                name = escape(&s.name),
                slot = escape(chart.slots.get(i).map_or("", String::as_str)),
                x = LEFT + slot_w * i as f64 + slot_w * 0.1,
                w = (slot_w * 0.8).max(1.0),
            );
            *b += v;
        }
        svg.push_str("</g>");
    }
    for (i, label) in &chart.ticks {
        let x = LEFT + slot_w * *i as f64;
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{y1:.1}" stroke="#888"/><text x="{x:.1}" y="{ty:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            escape(label),
            y0 = TOP + plot_h,
            y1 = TOP + plot_h + 5.0,
            ty = TOP + plot_h + 18.0,
        );
    }
    for (k, m) in chart.markers.iter().enumerate() {
        let x = LEFT + slot_w * m.at_slot;
        // Labels alternate between two rows so neighbouring boundaries stay readable.
        let ly = if k % 2 == 0 { TOP - 22.0 } else { TOP - 8.0 };
        let _ = write!(
            svg,
            r##"<line class="boundary" data-boundary="{label}" x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{y1:.1}" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="5,3"/><text x="{tx:.1}" y="{ly:.1}" font-size="11" fill="#c0392b">{label}</text>"##,
            label = escape(&m.label),
            y0 = TOP - 4.0,
            y1 = TOP + plot_h,
            tx = x + 3.0,
        );
    }
    legend(&mut svg, &chart.series, height);
    svg.push_str("</svg>");
    svg
}

/// Vertical columns, one per labelled bucket (zero buckets included, as `rect.bar` of
/// height 0, so the bucket count is fixed).
pub fn histogram(title: &str, buckets: &[(String, u64)], color: &str, height: f64) -> String {
    let n = buckets.len().max(1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = height - TOP - BOTTOM;
    let slot_w = plot_w / n as f64;
    let max = nice_max(buckets.iter().map(|(_, v)| *v).max().unwrap_or(0));
    let y = |v: u64| TOP + plot_h - plot_h * v as f64 / max as f64;
    let mut svg = open_svg(title, height);
    axes(&mut svg, max, plot_h, &y);
    for (i, (label, v)) in buckets.iter().enumerate() {
        let x = LEFT + slot_w * i as f64 + slot_w * 0.1;
        let w = slot_w * 0.8;
        let top = y(*v);
        let _ = write!(
            svg,
            r#"<rect class="bar" data-bucket="{label}" data-count="{v}" x="{x:.1}" y="{top:.1}" width="{w:.1}" height="{h:.1}" fill="{color}"><title>{label}: {v}</title></rect><text x="{cx:.1}" y="{ty:.1}" font-size="12" text-anchor="middle">{label}</text><text x="{cx:.1}" y="{vy:.1}" font-size="11" text-anchor="middle">{v}</text>"#,
            label = escape(label),
            color = escape(color),
            h = TOP + plot_h - top,
            cx = x + w / 2.0,
            ty = TOP + plot_h + 18.0,
            vy = top - 4.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal bars, one per item: (label, value, colour). `kind` names the `data-*`
/// attribute that holds the label (e.g. `outcome`, `domain`).
pub fn horizontal_bars(title: &str, kind: &str, items: &[(String, u64, String)]) -> String {
    let row = 26.0;
    let height = TOP + row * items.len().max(1) as f64 + 16.0;
    let label_w = 260.0;
    let plot_w = WIDTH - label_w - 90.0;
    let max = items.iter().map(|(_, v, _)| *v).max().unwrap_or(0).max(1);
    let mut svg = open_svg(title, height);
    for (i, (label, v, color)) in items.iter().enumerate() {
        let y = TOP + row * i as f64;
        let w = plot_w * *v as f64 / max as f64;
        let _ = write!(
            svg,
            r#"<text x="{tx:.1}" y="{ty:.1}" font-size="13" text-anchor="end">{label}</text><rect class="bar" data-{kind}="{label}" data-count="{v}" x="{label_w:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{color}"><title>{label}: {v}</title></rect><text x="{vx:.1}" y="{ty:.1}" font-size="12">{v}</text>"#,
            label = escape(label),
            kind = escape(kind),
            color = escape(color),
            tx = label_w - 8.0,
            ty = y + row * 0.6,
            h = row * 0.7,
            vx = label_w + w + 6.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn value(s: &Series, i: usize) -> u64 {
    s.values.get(i).copied().unwrap_or(0)
}

fn open_svg(title: &str, height: f64) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {WIDTH} {height}" width="100%" font-family="sans-serif"><title>{}</title>"#,
        escape(title)
    )
}

/// The y axis with labelled gridlines at 0, half and the top, each value once (for a top
/// of 1, half is 0 again: drawn twice it reads as a bold `0`).
fn axes(svg: &mut String, max: u64, plot_h: f64, y: &dyn Fn(u64) -> f64) {
    for v in axis_values(max) {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{x2}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end">{v}</text>"##,
            yy = y(v),
            x2 = WIDTH - RIGHT,
            tx = LEFT - 6.0,
            ty = y(v) + 4.0,
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{yb:.1}" stroke="#888"/>"##,
        yb = TOP + plot_h
    );
}

fn axis_values(max: u64) -> Vec<u64> {
    let mut values = vec![0, max / 2, max];
    values.dedup();
    values
}

fn legend(svg: &mut String, series: &[Series], height: f64) {
    let mut x = LEFT;
    let y = height - 14.0;
    for s in series {
        let _ = write!(
            svg,
            r#"<rect class="legend" x="{x:.1}" y="{ry:.1}" width="12" height="12" fill="{c}"/><text x="{tx:.1}" y="{y:.1}" font-size="12">{n}</text>"#,
            c = escape(&s.color),
            n = escape(&s.name),
            ry = y - 10.0,
            tx = x + 16.0,
        );
        x += 16.0 + 8.0 * s.name.chars().count() as f64 + 24.0;
    }
}

/// A round upper bound for an axis (1, 2 or 5 times a power of ten), at least 1.
fn nice_max(v: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= v {
                return step.saturating_mul(m).max(1);
            }
        }
        step = step.saturating_mul(10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_from_mail() {
        assert_eq!(
            escape("<script>\"a\"&'b'\u{1b}"),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;"
        );
    }

    #[test]
    fn each_axis_value_is_labelled_once() {
        assert_eq!(axis_values(1), [0, 1]);
        assert_eq!(axis_values(10), [0, 5, 10]);
        let svg = histogram("empty", &[("a".into(), 0), ("b".into(), 0)], "#000", 200.0);
        let zero_labels = svg.matches(r#"text-anchor="end">0</text>"#).count();
        assert_eq!(zero_labels, 1, "{svg}");
    }

    #[test]
    fn nice_axis_maxima() {
        assert_eq!(nice_max(0), 1);
        assert_eq!(nice_max(7), 10);
        assert_eq!(nice_max(11), 20);
        assert_eq!(nice_max(200), 200);
        assert_eq!(nice_max(201), 500);
    }

    #[test]
    fn stacked_chart_has_one_bar_per_non_zero_value() {
        let chart = StackedChart {
            title: "t".into(),
            slots: vec!["h0".into(), "h1".into(), "h2".into()],
            ticks: vec![(0, "day".into())],
            series: vec![
                Series {
                    name: "a<b".into(),
                    color: "#123456".into(),
                    values: vec![1, 0, 2],
                },
                Series {
                    name: "c".into(),
                    color: "#654321".into(),
                    values: vec![0, 3, 0],
                },
            ],
            markers: vec![Marker {
                at_slot: 1.5,
                label: "restored".into(),
            }],
        };
        let svg = stacked_columns(&chart, 300.0);
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), 3);
        assert_eq!(svg.matches(r#"<g class="series""#).count(), 2);
        assert_eq!(svg.matches(r#"class="boundary""#).count(), 1);
        assert!(svg.contains(r#"data-series="a&lt;b""#), "{svg}");
        assert!(!svg.contains("a<b"), "{svg}");
    }
}

//! `report --html`: the page is self-contained, and a real headless Chromium loads it and
//! finds the charts with the right number of bars and series for the sample; a screenshot
//! goes to `target/ci-artifacts/report.png`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::report_golden::settled_sample;
use crate::support::{Cli, NOW, check, incident, ingested};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium headless with a fresh profile and nothing that reaches the network; `extra` says
/// what to produce. Fails the test clearly when Chromium is not installed.
fn chromium(profile: &Path, extra: &[String], page: &Path) -> std::process::Output {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the HTML report test needs a real browser \
         (Debian: `apt-get install -y chromium`; .ci/run installs it)"
    );
    Command::new("timeout")
        .arg("120")
        .arg(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("start chromium")
}

/// A script for a copy of the page: marks each cell of the windows table with the number
/// of line boxes of its first text (`data-lines`) and that text (`data-text`, prefixed
/// `note:` for the action and note columns, which may wrap between words), and each time
/// in the prose the same way.
const WRAP_PROBE: &str = r#"<script>
for (const row of document.querySelectorAll('#windows tr')) {
  row.querySelectorAll('td').forEach((td, i) => {
    const text = document.createTreeWalker(td, NodeFilter.SHOW_TEXT).nextNode();
    if (!text || !text.data.trim()) return;
    const range = document.createRange();
    range.selectNodeContents(text);
    td.setAttribute('data-lines', range.getClientRects().length);
    td.setAttribute('data-text', (i >= 3 ? 'note:' : '') + text.data);
  });
}
for (const t of document.querySelectorAll('p time')) {
  t.setAttribute('data-lines', t.getClientRects().length);
  t.setAttribute('data-text', t.textContent);
}
</script></body>"#;

fn artifacts() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("ci-artifacts")
}

/// Values of `attr` on the elements of `class="bar"` in `dom` that carry it.
fn bar_attrs(dom: &str, attr: &str) -> Vec<String> {
    let needle = format!("{attr}=\"");
    dom.split("<rect class=\"bar\"")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>').unwrap_or(rest.len())];
            let start = tag.find(&needle)? + needle.len();
            let len = tag[start..].find('"')?;
            Some(tag[start..start + len].to_string())
        })
        .collect()
}

/// The data rows of `<table id="{id}">`: each cell's text (markup inside a cell dropped),
/// and its `data-bytes` attribute when it has one.
fn table_rows(html: &str, id: &str) -> Vec<Vec<(String, Option<String>)>> {
    let start = html
        .find(&format!("<table id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no table `{id}`"));
    let table = &html[start..];
    let table = &table[..table.find("</table>").expect("table ends")];
    table
        .split("<tr>")
        .skip(1)
        .filter(|row| !row.contains("<th"))
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let (tag, rest) = cell.split_once('>').expect("cell tag ends");
                    let inner = &rest[..rest.find("</td>").expect("cell ends")];
                    let mut text = String::new();
                    let mut in_tag = false;
                    for c in inner.chars() {
                        match c {
                            '<' => in_tag = true,
                            '>' => in_tag = false,
                            c if !in_tag => text.push(c),
                            _ => {}
                        }
                    }
                    let bytes = tag
                        .split("data-bytes=\"")
                        .nth(1)
                        .and_then(|b| b.split('"').next())
                        .map(str::to_string);
                    (text, bytes)
                })
                .collect()
        })
        .collect()
}

/// The numbers of a row from its second cell on.
fn numbers(row: &[(String, Option<String>)]) -> Vec<u64> {
    row[1..]
        .iter()
        .map(|(t, _)| t.parse().unwrap_or_else(|_| panic!("`{t}` in {row:?}")))
        .collect()
}

fn html_of(cli: &Cli, top: &str) -> String {
    let page = cli.at("report.html");
    let out = cli.run(&[
        "report",
        "--incident",
        &incident().display().to_string(),
        "--now",
        NOW,
        "--top",
        top,
        "--html",
        &page.display().to_string(),
    ]);
    check(&out, 0);
    std::fs::read_to_string(&page).expect("the HTML report was written")
}

#[test]
fn html_report_agrees_with_the_text_report() {
    let cli = ingested();
    let html = html_of(&cli, "3");
    let json = report_json(&cli);
    let text = cli.run(&[
        "report",
        "--incident",
        &incident().display().to_string(),
        "--now",
        NOW,
        "--top",
        "3",
    ]);
    check(&text, 0);

    // Domains: before a run every recipient is open, so the HTML's totals are the text
    // report's (the sample's 3 duplicates are extra copies, counted once), and each row's
    // outcomes add up to its total.
    let domains = table_rows(&html, "domains-table");
    let expected: Vec<(String, u64)> = json
        .events("domain")
        .iter()
        .map(|d| {
            (
                d["domain"].as_str().unwrap_or_default().to_string(),
                d["recipients"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let shown: Vec<(String, u64)> = domains
        .iter()
        .map(|r| (r[0].0.clone(), numbers(r)[0]))
        .collect();
    assert_eq!(shown, expected);
    assert_eq!(shown.len(), 3);
    for row in &domains {
        let n = numbers(row);
        assert_eq!(n[0], n[1..].iter().sum::<u64>(), "{row:?}");
    }

    // The plan: the same rows, bytes in the text report's units, exact in data-bytes.
    let plan = table_rows(&html, "plan-table");
    let rows = json.events("plan");
    assert_eq!(plan.len(), rows.len());
    let text_rows: Vec<&str> = text
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Per window and disposition"))
        .skip(3)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(text_rows.len(), rows.len(), "{}", text.stdout);
    for ((cells, row), line) in plan.iter().zip(&rows).zip(&text_rows) {
        assert_eq!(cells[0].0, row["window"].as_str().unwrap_or_default());
        assert_eq!(cells[1].0, row["disposition"].as_str().unwrap_or_default());
        let (shown, exact) = &cells[4];
        assert_eq!(exact.as_deref(), Some(row["bytes"].to_string().as_str()));
        assert!(
            line.ends_with(&format!("  {shown}")) && shown.contains('B'),
            "`{shown}` is not how the text report shows `{line}`"
        );
    }
    assert!(plan.iter().any(|r| r[4].0 == "3.2 MB"), "{plan:?}");

    // Nothing delivered yet: a sentence instead of an empty chart.
    assert!(html.contains("id=\"delays-none\""));
    assert!(!html.contains("id=\"delays-chart\""));

    // Quarantined items listed as the text report lists them (3 of 6 with --top 3).
    let listed: Vec<&str> = text
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Quarantined items: 6"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(listed.len(), 4, "{}", text.stdout);
    let quarantine = table_rows(&html, "quarantine-table");
    assert_eq!(quarantine.len(), 3);
    for (row, line) in quarantine.iter().zip(&listed) {
        assert_eq!(format!("  {}: {}", row[0].0, row[1].0), *line);
    }
    assert!(listed[3].contains("3 more") && html.contains("… and 3 more"));
}

fn report_json(cli: &Cli) -> crate::support::Output {
    let out = cli.run(&[
        "--json",
        "report",
        "--incident",
        &incident().display().to_string(),
        "--now",
        NOW,
        "--top",
        "3",
    ]);
    check(&out, 0);
    out
}

#[test]
fn html_report_loads_in_headless_chromium_with_its_charts() {
    let cli = settled_sample();
    let page = cli.at("incident report.html");
    let out = cli.run(&[
        "report",
        "--incident",
        &incident().display().to_string(),
        "--now",
        NOW,
        "--rate",
        "200/s",
        "--top",
        "3",
        "--html",
        &page.display().to_string(),
    ]);
    check(&out, 0);
    let html = std::fs::read_to_string(&page).expect("the HTML report was written");
    // Self-contained: no script, no external resource (the SVG namespace is a name only).
    for banned in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(banned), "`{banned}` in the page");
    }

    let plan = report_json(&cli);
    let arrivals = plan.events("arrivals");
    let windows: BTreeSet<String> = arrivals
        .iter()
        .map(|a| a["window"].as_str().unwrap_or_default().to_string())
        .collect();
    let status = cli.status();

    let profile = tempfile::tempdir().expect("profile dir");
    let dump = chromium(profile.path(), &["--dump-dom".to_string()], &page);
    let dom = String::from_utf8_lossy(&dump.stdout);
    assert_eq!(
        dump.status.code(),
        Some(0),
        "chromium failed:\n{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(
        dom.contains("mail store outage, January 2023") && dom.contains("</html>"),
        "chromium did not load the page:\n{dom}"
    );

    // Timeline: one bar per (hour, window) with mail, one series per window, five windows
    // (four and outside), a boundary per window start, the last window's end, the restore.
    let series = bar_attrs(&dom, "data-series");
    assert_eq!(series.len(), arrivals.len(), "timeline bars");
    assert_eq!(dom.matches("<g class=\"series\"").count(), windows.len());
    assert_eq!(windows.len(), 5, "{windows:?}");
    assert_eq!(dom.matches("class=\"boundary\"").count(), 6);
    let slots: u64 = bar_attrs(&dom, "data-count").len() as u64;
    assert!(slots > series.len() as u64);

    // Outcomes: six bars, the delivered one matching status.
    let outcomes = bar_attrs(&dom, "data-outcome");
    assert_eq!(
        outcomes,
        [
            "delivered",
            "bounced",
            "dropped",
            "held",
            "pending",
            "uncertain"
        ]
    );
    let delivered = format!(
        "data-outcome=\"delivered\" data-count=\"{}\"",
        status["states"]["delivered"]
    );
    assert!(dom.contains(&delivered), "no `{delivered}`");

    // Delays: ten buckets; with the run's times pinned to NOW the delays are NOW − arrival,
    // so none is under a day and the mail of the days before spreads over two buckets.
    let buckets = bar_attrs(&dom, "data-bucket");
    assert_eq!(buckets.len(), 10, "{buckets:?}");
    let counts: Vec<u64> = dom
        .split("data-bucket=\"")
        .skip(1)
        .filter_map(|r| {
            let c = r.split("data-count=\"").nth(1)?;
            c[..c.find('"')?].parse().ok()
        })
        .collect();
    assert_eq!(counts.len(), 10);
    assert_eq!(counts[..5].iter().sum::<u64>(), 0, "{counts:?}");
    assert!(counts.iter().filter(|c| **c > 0).count() >= 2, "{counts:?}");
    assert_eq!(
        Some(counts.iter().sum::<u64>()),
        status["states"]["delivered"].as_u64(),
        "every delivered recipient has a delay"
    );

    // Top domains: --top 3, each row's outcomes adding up to its total.
    assert_eq!(bar_attrs(&dom, "data-domain").len(), 3);
    let domains = table_rows(&html, "domains-table");
    assert_eq!(domains.len(), 3);
    for row in &domains {
        let n = numbers(row);
        assert_eq!(n[0], n[1..].iter().sum::<u64>(), "{row:?}");
    }

    // In a narrow window the notes wrap, but no window name or time does: a copy of the
    // page with a probe that counts the line boxes of each cell's first text.
    let probe = cli.at("probe.html");
    std::fs::write(&probe, html.replace("</body>", WRAP_PROBE)).expect("write the probe");
    let profile = tempfile::tempdir().expect("profile dir");
    let dump = chromium(
        profile.path(),
        &[
            "--dump-dom".to_string(),
            "--window-size=700,2000".to_string(),
        ],
        &probe,
    );
    let probed = String::from_utf8_lossy(&dump.stdout);
    let lines: Vec<(String, String)> = probed
        .split("data-lines=\"")
        .skip(1)
        .filter_map(|rest| {
            let (n, rest) = rest.split_once('"')?;
            let text = rest.split_once("data-text=\"")?.1.split('"').next()?;
            Some((n.to_string(), text.to_string()))
        })
        .collect();
    // 4 windows of 5 cells, `outside` with 3, the 2 times of the opening paragraph.
    assert_eq!(lines.len(), 4 * 5 + 3 + 2, "probe results: {lines:?}");
    for (n, text) in &lines {
        if text.contains("note:") {
            continue;
        }
        assert_eq!(n, "1", "`{text}` wraps over {n} lines at 700px");
    }
    assert!(
        lines.iter().any(|(n, t)| t.contains("note:") && n != "1"),
        "the probe sees no wrapped note either: {lines:?}"
    );

    // The screenshot is made in a temp dir and only then renamed into target/: two suites
    // running at once on one tree never read each other's half-written file.
    let profile = tempfile::tempdir().expect("profile dir");
    let png = profile.path().join("report.png");
    let shot = chromium(
        profile.path(),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1400,1800".to_string(),
        ],
        &page,
    );
    assert_eq!(
        shot.status.code(),
        Some(0),
        "chromium screenshot failed:\n{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    assert!(bytes.len() > 20_000, "screenshot suspiciously small");
    let dir = artifacts();
    std::fs::create_dir_all(&dir).expect("create target/ci-artifacts");
    let partial = dir.join(format!("report.png.{}", std::process::id()));
    std::fs::write(&partial, &bytes).expect("write the screenshot artifact");
    std::fs::rename(&partial, dir.join("report.png")).expect("rename the screenshot artifact");
}

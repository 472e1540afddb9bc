//! `report --html`: the page is self-contained, and a real headless Chromium loads it and
//! finds the charts with the right number of bars and series for the sample; a screenshot
//! goes to `target/ci-artifacts/report.png`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::report_golden::settled_sample;
use crate::support::{Cli, NOW, check, incident};

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

    // Top domains: --top 3.
    assert_eq!(bar_attrs(&dom, "data-domain").len(), 3);

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

//! The incident files the integration tests write: one builder instead of a TOML literal
//! per test, so a test spells out only what it is about (its windows, its lifetime, a
//! `[bounces]` section) and a change to the incident format touches one place. The sample
//! incident of `fixtures/incident.toml` (`support::incident()`) stays a file: it is
//! documentation too.

use std::path::{Path, PathBuf};

/// An incident file under construction. `TestIncident::new()` is the mini spools' outage
/// (`mx1.example.net`, restored 2023-01-26 13:00 +01:00, 30 days from arrival, mail outside
/// every window held) without windows; `deliver_all()` adds the one window that delivers
/// everything the mini spools hold.
#[derive(Debug, Clone)]
pub struct TestIncident {
    name: String,
    reporting_mta: String,
    restored_at: String,
    queue_lifetime: String,
    lifetime_from: String,
    outside: String,
    windows: Vec<Window>,
    sections: Vec<String>,
}

#[derive(Debug, Clone)]
struct Window {
    name: String,
    start: String,
    end: String,
    action: String,
    /// The DSN status of a bouncing window.
    status: Option<String>,
}

impl Window {
    fn toml(&self) -> String {
        let mut text = format!(
            "[[window]]\nname = \"{}\"\nstart = \"{}\"\nend = \"{}\"\naction = \"{}\"\n",
            self.name, self.start, self.end, self.action
        );
        if let Some(status) = &self.status {
            text.push_str(&format!("status = \"{status}\"\n"));
        }
        text
    }
}

impl Default for TestIncident {
    fn default() -> Self {
        TestIncident::new()
    }
}

impl TestIncident {
    pub fn new() -> TestIncident {
        TestIncident {
            name: "test outage".into(),
            reporting_mta: "mx1.example.net".into(),
            restored_at: "2023-01-26T13:00:00+01:00".into(),
            queue_lifetime: "30d".into(),
            lifetime_from: "arrival".into(),
            outside: "hold".into(),
            windows: Vec::new(),
            sections: Vec::new(),
        }
    }

    /// One window that delivers everything the mini spools hold (their arrival is inside
    /// it), with a lifetime long enough that nothing expires at `support::NOW`.
    pub fn deliver_all() -> TestIncident {
        TestIncident::new().window(
            "all",
            "2023-01-01T00:00:00+01:00",
            "2023-01-26T13:00:00+01:00",
            "deliver",
        )
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    pub fn reporting_mta(mut self, host: &str) -> Self {
        self.reporting_mta = host.into();
        self
    }

    pub fn restored_at(mut self, at: &str) -> Self {
        self.restored_at = at.into();
        self
    }

    /// `queue_lifetime` (`"5d"`, `"3600s"`).
    pub fn lifetime(mut self, lifetime: &str) -> Self {
        self.queue_lifetime = lifetime.into();
        self
    }

    /// `lifetime_from`: `"arrival"` or `"restored"`.
    pub fn lifetime_from(mut self, from: &str) -> Self {
        self.lifetime_from = from.into();
        self
    }

    /// `outside`: what happens to mail outside every window.
    pub fn outside(mut self, action: &str) -> Self {
        self.outside = action.into();
        self
    }

    /// A `[[window]]` with `action` (`deliver`, `hold`, `bounce`).
    pub fn window(self, name: &str, start: &str, end: &str, action: &str) -> Self {
        self.window_with(name, start, end, action, None)
    }

    /// A bouncing `[[window]]` whose DSNs carry `status`.
    pub fn bounce_window(self, name: &str, start: &str, end: &str, status: &str) -> Self {
        self.window_with(name, start, end, "bounce", Some(status))
    }

    fn window_with(
        mut self,
        name: &str,
        start: &str,
        end: &str,
        action: &str,
        status: Option<&str>,
    ) -> Self {
        self.windows.push(Window {
            name: name.into(),
            start: start.into(),
            end: end.into(),
            action: action.into(),
            status: status.map(str::to_string),
        });
        self
    }

    /// Every window's action becomes `action` (the same timeline, another outcome).
    pub fn every_window(mut self, action: &str) -> Self {
        for w in &mut self.windows {
            w.action = action.into();
        }
        self
    }

    /// A section after the windows, as TOML (`[bounces]` and its keys).
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.into());
        self
    }

    pub fn toml(&self) -> String {
        let mut text = format!(
            "name = \"{}\"\nreporting_mta = \"{}\"\nrestored_at = \"{}\"\nqueue_lifetime = \"{}\"\nlifetime_from = \"{}\"\noutside = \"{}\"\n",
            self.name,
            self.reporting_mta,
            self.restored_at,
            self.queue_lifetime,
            self.lifetime_from,
            self.outside
        );
        let windows = self.windows.iter().map(Window::toml);
        for part in windows.chain(self.sections.iter().cloned()) {
            text.push('\n');
            text.push_str(&part);
        }
        text
    }

    /// Writes the file to `dir/incident.toml`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("incident.toml");
        std::fs::write(&path, self.toml()).expect("write incident");
        path
    }
}

/// The builder's text is an incident the binary accepts: every knob it turns is a real key.
#[test]
fn a_built_incident_is_one_the_binary_accepts() {
    let cli = super::Cli::new();
    let incident = TestIncident::deliver_all()
        .name("every knob")
        .reporting_mta("mx.example.test")
        .restored_at("2023-01-26T13:00:00Z")
        .lifetime("5d")
        .lifetime_from("restored")
        .outside("deliver")
        .bounce_window(
            "rejected",
            "2023-01-26T13:00:00+01:00",
            "2023-01-26T13:00:00Z",
            "5.2.1",
        )
        .section("[bounces]\nspam = \"suppress\"\n")
        .write(cli.path());
    let text = std::fs::read_to_string(&incident).expect("incident");
    assert!(text.contains("status = \"5.2.1\""), "{text}");
    super::minispool::ingest(
        &cli,
        &[super::minispool::Mail::plain(1, &["r@example.net"])],
    );
    let out = cli.run(&[
        "--json".as_ref(),
        "report".as_ref(),
        "--incident".as_ref(),
        incident.as_os_str(),
        "--now".as_ref(),
        super::NOW.as_ref(),
    ]);
    super::check(&out, 0);
    assert_eq!(out.event("report_summary")["deliveries"], 1, "{text}");
    let bounced = TestIncident::deliver_all().every_window("bounce").toml();
    assert!(
        bounced.contains("action = \"bounce\"") && !bounced.contains("\"deliver\""),
        "{bounced}"
    );
}

//! A real Prometheus (Debian `prometheus`) started by a test: its own temp data dir, a
//! free loopback port, one scrape job every second against the run's `--metrics`
//! endpoint; stopped (killed and reaped) when dropped, pass or fail. Also the small HTTP
//! GET the tests use to read it and the endpoint.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BINARY: &str = "/usr/bin/prometheus";

pub struct Prometheus {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`127.0.0.1:PORT`) every second and waits
    /// until it answers `/-/ready`.
    #[track_caller]
    pub fn start(target: &str) -> Prometheus {
        assert!(
            std::path::Path::new(BINARY).exists(),
            "{BINARY} is missing: apt-get install prometheus (.ci/run installs it)"
        );
        let dir = tempfile::tempdir().expect("temp dir for prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: spoolreplay\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            dir,
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(port, "/-/ready").is_none_or(|(status, _)| status != 200) {
            assert!(
                Instant::now() < deadline,
                "prometheus did not get ready; its log:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The values of an instant query (`/api/v1/query`), as numbers.
    #[track_caller]
    pub fn query(&self, promql: &str) -> Vec<f64> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = get(self.port, &path).expect("query prometheus");
        assert_eq!(status, 200, "prometheus answered {status}: {body}");
        let v: Value = serde_json::from_str(&body).expect("prometheus answers JSON");
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .expect("a vector result")
            .iter()
            .map(|r| {
                r["value"][1]
                    .as_str()
                    .expect("a sample value")
                    .parse()
                    .expect("a number")
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0): the status and the body, or `None` if
/// nothing listens there (yet).
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

//! Postfix's `smtp-sink` as a relay for tests: it accepts every message and dumps each
//! transaction (with `X-Mail-Args:`/`X-Rcpt-Args:` envelope lines) to a file.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Sink {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

impl Sink {
    /// Starts a sink dumping into `dir`; fails the test if smtp-sink is missing.
    #[track_caller]
    pub fn start(dir: &Path) -> Sink {
        assert!(
            Path::new(SMTP_SINK).exists(),
            "{SMTP_SINK} is missing: install Debian's postfix package (.ci/run does)"
        );
        std::fs::create_dir_all(dir).expect("sink dir");
        // smtp-sink drops privileges to `nobody`, who must be able to write the dumps.
        let status = Command::new("chmod")
            .arg("777")
            .arg(dir)
            .status()
            .expect("chmod");
        assert!(status.success());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let template = format!("{}/%H%M%S.", dir.display());
        let child = Command::new(SMTP_SINK)
            .args([
                "-u",
                "nobody",
                "-d",
                &template,
                &format!("127.0.0.1:{port}"),
                "64",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp-sink");
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "smtp-sink did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sink {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every dumped transaction's text once the dump has stopped changing: smtp-sink may
    /// write a transaction's file a moment after its 250, which a loaded machine stretches.
    /// Two equal reads 100 ms apart (at most 5 s).
    pub fn messages_settled(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = self.messages();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.messages();
            if now == last || Instant::now() >= deadline {
                return now;
            }
            last = now;
        }
    }

    /// Every dumped transaction's text.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap_or_default()).into_owned())
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first header `name:` in a dumped message.
pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

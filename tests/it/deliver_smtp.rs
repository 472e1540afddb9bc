//! The SMTP store (our own client) against Postfix's `smtp-sink`, which dumps each
//! transaction with its envelope (`X-Mail-Args:`, `X-Rcpt-Args:`). Per-recipient refusals
//! need a scripted peer and are unit tests in `src/deliver/smtp/tests.rs`.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spoolreplay::address::{Notify, ReturnContent, ReversePath};
use spoolreplay::deliver::smtp::{Security, SmtpOptions, SmtpStore, SmtpTarget};
use spoolreplay::deliver::wire::{ClientOptions, Timeouts};
use spoolreplay::deliver::{Deliverer, Delivery, Outcome, RecipientSpec};

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
const MESSAGE: &[u8] =
    b"From: s@remote.test\r\nSubject: caf\xc3\xa9\r\n\r\n.leading dot\r\nline two\r\n";

/// A running `smtp-sink` that dumps into its own folder; killed on drop.
struct Sink {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sink {
    #[track_caller]
    fn start(extra: &[&str]) -> Sink {
        assert!(
            Path::new(SMTP_SINK).exists(),
            "{SMTP_SINK} is missing: install postfix (apt-get install -y postfix) to run the \
             SMTP store tests"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        // smtp-sink writes its dumps as `nobody`.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod dump dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let template = format!("{}/%H%M%S.", dir.path().display());
        let child = Command::new(SMTP_SINK)
            .args(["-u", "nobody", "-h", "sink.example.test", "-d", &template])
            .args(extra)
            .arg(format!("127.0.0.1:{port}"))
            .arg("64")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp-sink");
        let sink = Sink { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "smtp-sink did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sink
    }

    fn store(&self) -> SmtpStore {
        let target = SmtpTarget {
            security: Security::Plain,
            host: "127.0.0.1".into(),
            port: self.port,
        };
        let options = SmtpOptions {
            client: ClientOptions {
                hello_name: "replay.example.test".into(),
                timeouts: Timeouts {
                    connect: Duration::from_secs(5),
                    command: Duration::from_secs(5),
                    data_end: Duration::from_secs(5),
                },
            },
            credentials: None,
            insecure: false,
        };
        SmtpStore::connect(target, options).expect("connects to smtp-sink")
    }

    /// The dumped transactions (the sink writes them after its reply: wait a little).
    fn dumps(&self, expected: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
                .expect("read dump dir")
                .map(|e| e.expect("entry").path())
                .collect();
            paths.sort();
            if paths.len() >= expected || Instant::now() > deadline {
                return paths
                    .iter()
                    .map(|p| String::from_utf8_lossy(&std::fs::read(p).expect("dump")).into_owned())
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn delivery<'a>(sender: &'a ReversePath) -> Delivery<'a> {
    Delivery {
        envid: Some("Q1+x"),
        ret: Some(ReturnContent::Headers),
        ..Delivery::new(
            "k",
            sender,
            MESSAGE,
            chrono::DateTime::parse_from_rfc3339("2023-01-23T10:00:00+01:00").unwrap(),
        )
    }
}

fn rcpts() -> [RecipientSpec<'static>; 2] {
    [
        RecipientSpec {
            address: "alice@example.test",
            orcpt: Some("rfc822;Alice@example.test"),
            notify: Some(Notify {
                failure: true,
                delay: true,
                ..Notify::default()
            }),
        },
        RecipientSpec::plain("bob@example.test"),
    ]
}

#[test]
fn smtp_sink_gets_the_message_with_dsn_parameters() {
    let sink = Sink::start(&[]);
    let mut store = sink.store();
    let s = ReversePath::Address("s@remote.test".into());
    let got = store.deliver(&delivery(&s), &rcpts()).unwrap();
    for o in &got {
        match o {
            Outcome::Delivered { detail, remote } => {
                assert!(detail.starts_with("250 2.0.0"), "{detail}");
                assert_eq!(remote.as_deref(), Some("sink.example.test"));
            }
            other => panic!("{other:?}"),
        }
    }
    drop(store);
    let dumps = sink.dumps(1);
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    let d = &dumps[0];
    assert!(
        d.contains("X-Mail-Args: <s@remote.test> BODY=8BITMIME RET=HDRS ENVID=Q1+2Bx\n"),
        "{d}"
    );
    assert!(
        d.contains(
            "X-Rcpt-Args: <alice@example.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;Alice@example.test\n"
        ),
        "{d}"
    );
    assert!(d.contains("X-Rcpt-Args: <bob@example.test>\n"), "{d}");
    // The dump stores LF line ends, dot-stuffing undone, and one empty line after each
    // message (checked with a hand-made session: `hi` CRLF `.` is dumped as "hi\n\n").
    assert!(
        d.ends_with("\nSubject: caf\u{e9}\n\n.leading dot\nline two\n\n"),
        "{:?}",
        &d.as_bytes()[d.len().saturating_sub(60)..]
    );
}

#[test]
fn smtp_sink_without_dsn_gets_no_dsn_parameters() {
    let sink = Sink::start(&["-N"]);
    let mut store = sink.store();
    let null = ReversePath::Null;
    let got = store.deliver(&delivery(&null), &rcpts()).unwrap();
    assert!(
        got.iter().all(|o| matches!(o, Outcome::Delivered { .. })),
        "{got:?}"
    );
    drop(store);
    let dumps = sink.dumps(1);
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    let d = &dumps[0];
    assert!(d.contains("X-Mail-Args: <> BODY=8BITMIME\n"), "{d}");
    assert!(d.contains("X-Rcpt-Args: <alice@example.test>\n"), "{d}");
}

#[test]
fn smtp_sink_hanging_up_after_the_final_dot_is_uncertain() {
    // `-q .`: the sink takes the message, then disconnects without a reply.
    let sink = Sink::start(&["-q", "."]);
    let mut store = sink.store();
    let s = ReversePath::Address("s@remote.test".into());
    let got = store.deliver(&delivery(&s), &rcpts()).unwrap();
    for o in &got {
        assert!(
            matches!(o, Outcome::Uncertain { reply, remote }
                if reply.to_string().contains("may have delivered") && remote.as_deref() == Some("sink.example.test")),
            "{o:?}"
        );
    }
    // It was in fact received: exactly why neither "delivered" nor "deferred" is honest.
    assert_eq!(sink.dumps(1).len(), 1);
    // The next message opens a new connection.
    let again = store.deliver(&delivery(&s), &rcpts()[1..]).unwrap();
    assert!(matches!(&again[0], Outcome::Uncertain { .. }), "{again:?}");
    assert_eq!(store.connections_opened(), 2);
}

//! `run` under a service manager (issue 18 item 2): with `NOTIFY_SOCKET` set, the
//! notifications arrive on a datagram socket the test binds, in order: `READY=1`, a
//! `STATUS=` progress line, `WATCHDOG=1` pings (`WATCHDOG_USEC` set), `STOPPING=1` after
//! SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::support::minispool::{self, run_args};
use crate::support::{ChildGuard, Cli, check, send_signal};

#[test]
fn a_notify_unit_hears_ready_status_watchdog_then_stopping_on_sigterm() {
    let cli = Cli::new();
    let mails = minispool::plain_spool(40, |i| vec![format!("u{}@example.net", i % 3)]);
    minispool::ingest(&cli, &mails);
    let socket_path = cli.at("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let store = format!("maildir:{}", cli.store().display());
    let args = run_args(&cli, &store, &["--rate", "2/s"]);
    let mut cmd = cli.command(&args);
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let run = ChildGuard(Some(cmd.spawn().expect("spawn spoolreplay")));

    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut receive = |seen: &mut Vec<String>| {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            seen.extend(text.lines().map(str::to_string));
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|l| l.starts_with("STATUS=")) {
        assert!(Instant::now() < deadline, "no READY and STATUS: {seen:?}");
        receive(&mut seen);
    }
    send_signal(run.id(), "TERM");
    while !seen.iter().any(|l| l == "STOPPING=1") {
        assert!(Instant::now() < deadline, "no STOPPING=1: {seen:?}");
        receive(&mut seen);
    }
    let out = crate::support::Output::from(run.wait_with_output().expect("wait"));
    check(&out, 143);

    let at = |what: &dyn Fn(&str) -> bool| {
        seen.iter()
            .position(|l| what(l))
            .unwrap_or_else(|| panic!("missing in {seen:?}"))
    };
    let ready = at(&|l| l == "READY=1");
    let status = at(&|l| l.starts_with("STATUS=") && l.contains("messages handed to the store"));
    let stopping = at(&|l| l == "STOPPING=1");
    assert!(ready < status && status < stopping, "{seen:?}");
    assert!(
        seen[..stopping].iter().any(|l| l == "WATCHDOG=1"),
        "no watchdog ping before STOPPING: {seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|l| *l == "READY=1").count(),
        1,
        "{seen:?}"
    );
}

//! The LMTP store against a real Dovecot (see `support::dovecot`).

use spoolreplay::address::ReversePath;
use spoolreplay::deliver::lmtp::LmtpStore;
use spoolreplay::deliver::wire::{ClientOptions, Timeouts};
use spoolreplay::deliver::{Deliverer, Delivery, Outcome, RecipientSpec};

use crate::support::dovecot::{Dovecot, HOSTNAME};

/// CRLF line ends, a line starting with a dot, 8-bit text: what must survive unchanged.
const MESSAGE: &[u8] = b"From: Sender <s@remote.test>\r\nTo: team@example.test\r\n\
Subject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <m1@remote.test>\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
Caf\xc3\xa9 au lait.\r\n.a line with a leading dot\r\n..two dots\r\n.\r\nend\r\n";

fn options() -> ClientOptions {
    ClientOptions {
        hello_name: "replay.example.test".into(),
        timeouts: Timeouts::default(),
    }
}

fn delivery<'a>(sender: &'a ReversePath, content: &'a [u8]) -> Delivery<'a> {
    Delivery {
        envid: Some("ENV1"),
        ..Delivery::new(
            "k",
            sender,
            content,
            chrono::DateTime::parse_from_rfc3339("2023-01-23T10:00:00+01:00").unwrap(),
        )
    }
}

fn specs<'a>(addrs: &[&'a str]) -> Vec<RecipientSpec<'a>> {
    addrs.iter().map(|a| RecipientSpec::plain(a)).collect()
}

fn sender() -> ReversePath {
    ReversePath::Address("s@remote.test".into())
}

/// The stored file without the trace headers Dovecot prepends (Return-Path,
/// Delivered-To, Received with its folded lines).
fn without_trace(stored: &[u8]) -> &[u8] {
    let mut rest = stored;
    let mut in_trace = false;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        let trace = ["Return-Path:", "Delivered-To:", "Received:"]
            .iter()
            .any(|h| line.starts_with(h.as_bytes()));
        if trace || (in_trace && folded) {
            in_trace = true;
            rest = &rest[end..];
        } else {
            return rest;
        }
    }
}

fn lf(bytes: &[u8]) -> Vec<u8> {
    crate::support::lf_normalized(bytes)
}

#[track_caller]
fn assert_one_copy(dovecot: &Dovecot, address: &str, original: &[u8]) {
    let files = dovecot.delivered(address);
    assert_eq!(files.len(), 1, "{address}: {} files", files.len());
    let body = without_trace(&files[0]);
    assert!(
        body == lf(original).as_slice(),
        "{address}: stored copy differs:\n{}",
        String::from_utf8_lossy(&files[0])
    );
}

#[test]
fn lmtp_multi_recipient_delivery_keeps_the_bytes_and_refuses_unknown_users() {
    let dovecot = Dovecot::start();
    let mut store = LmtpStore::connect(dovecot.tcp_target(), options()).unwrap();
    let s = sender();
    let got = store
        .deliver(
            &delivery(&s, MESSAGE),
            &specs(&[
                "alice@example.test",
                "nobody@example.test",
                "Bob@Example.test",
                "carol@example.test",
            ]),
        )
        .unwrap();
    for i in [0, 2, 3] {
        match &got[i] {
            Outcome::Delivered { detail, remote } => {
                assert!(detail.starts_with("250 2.0.0 <"), "{detail}");
                assert!(detail.contains("Saved"), "{detail}");
                assert_eq!(remote.as_deref(), Some(HOSTNAME));
            }
            other => panic!("recipient {i}: {other:?}"),
        }
    }
    match &got[1] {
        Outcome::Failed {
            reply,
            status,
            remote,
        } => {
            assert_eq!(status, "5.1.1");
            assert!(
                reply
                    .to_string()
                    .starts_with("550 5.1.1 <nobody@example.test> User doesn't exist"),
                "{reply}"
            );
            assert_eq!(remote.as_deref(), Some(HOSTNAME));
        }
        other => panic!("{other:?}"),
    }
    for address in [
        "alice@example.test",
        "bob@example.test",
        "carol@example.test",
    ] {
        assert_one_copy(&dovecot, address, MESSAGE);
    }
}

#[test]
fn lmtp_bare_lf_message_is_stored_unchanged() {
    let dovecot = Dovecot::start();
    let mut store = LmtpStore::connect(dovecot.tcp_target(), options()).unwrap();
    let s = sender();
    let message = b"Subject: lf only\n\n.dot\nno final newline";
    let got = store
        .deliver(&delivery(&s, message), &specs(&["alice@example.test"]))
        .unwrap();
    assert!(matches!(&got[0], Outcome::Delivered { .. }), "{got:?}");
    let files = dovecot.delivered("alice@example.test");
    assert_eq!(files.len(), 1);
    // The server adds the line end the spool lacked; nothing else changes.
    assert_eq!(
        without_trace(&files[0]),
        b"Subject: lf only\n\n.dot\nno final newline\n"
    );
}

#[test]
fn lmtp_over_quota_is_deferred_with_the_servers_reply() {
    let dovecot = Dovecot::start();
    let mut store = LmtpStore::connect(dovecot.tcp_target(), options()).unwrap();
    let s = sender();
    let big = format!("Subject: big\r\n\r\n{}", "0123456789abcdef\r\n".repeat(850));
    let first = store
        .deliver(
            &delivery(&s, big.as_bytes()),
            &specs(&["full@example.test"]),
        )
        .unwrap();
    assert!(matches!(&first[0], Outcome::Delivered { .. }), "{first:?}");
    let second = store
        .deliver(
            &delivery(&s, big.as_bytes()),
            &specs(&["full@example.test", "alice@example.test"]),
        )
        .unwrap();
    match &second[0] {
        Outcome::Deferred { reply, remote } => {
            assert!(
                reply
                    .to_string()
                    .starts_with("452 4.2.2 <full@example.test> Quota exceeded"),
                "{reply}"
            );
            assert_eq!(remote.as_deref(), Some(HOSTNAME));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&second[1], Outcome::Delivered { .. }),
        "{second:?}"
    );
    assert_eq!(dovecot.delivered("full@example.test").len(), 1);
    assert_eq!(dovecot.delivered("alice@example.test").len(), 1);
}

#[test]
fn lmtp_unix_socket_and_connection_reuse() {
    let dovecot = Dovecot::start();
    let mut store = LmtpStore::connect(dovecot.socket_target(), options()).unwrap();
    assert!(
        store.describe().starts_with("lmtp:/"),
        "{}",
        store.describe()
    );
    let s = sender();
    // The readiness probe and our connection (the log is written a little later).
    let before = dovecot
        .log_when("Connect from", 2)
        .matches("Connect from")
        .count();
    assert!(
        before >= 2,
        "dovecot logs no connections:\n{}",
        dovecot.log()
    );
    for n in 0..3 {
        let message = format!("Subject: n{n}\r\n\r\nbody {n}\r\n");
        let got = store
            .deliver(
                &delivery(&s, message.as_bytes()),
                &specs(&["carol@example.test"]),
            )
            .unwrap();
        assert!(matches!(&got[0], Outcome::Delivered { .. }), "{got:?}");
    }
    assert_eq!(store.connections_opened(), 1);
    drop(store);
    assert_eq!(dovecot.delivered("carol@example.test").len(), 3);
    // Dovecot logs each LMTP connection; ours opened none after the first. Wait until the
    // three deliveries are logged, so that a late connection line would be there too.
    let after = dovecot
        .log_when("saved mail to", 3)
        .matches("Connect from")
        .count();
    assert_eq!(after, before, "log:\n{}", dovecot.log());
}

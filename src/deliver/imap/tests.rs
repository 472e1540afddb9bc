//! The IMAP store against a scripted peer, and its pure parts.

use std::time::Duration;

use super::codec::{literal_size, parse_status};
use super::*;
use crate::address::{Mailbox, ReversePath};

#[test]
fn targets_round_trip() {
    let t: ImapTarget = "imaps://store.example.net".parse().expect("target");
    assert_eq!(t.port, 993);
    assert_eq!(t.to_string(), "imaps://store.example.net:993");
    let t: ImapTarget = "imap+starttls://[::1]:1143".parse().expect("target");
    assert_eq!(t.security, Security::StartTls);
    assert_eq!(t.to_string(), "imap+starttls://[::1]:1143");
    assert!("imap://".parse::<ImapTarget>().is_err());
    assert!("lmtp://x".parse::<ImapTarget>().is_err());
}

#[test]
fn dates_are_imap_date_times() {
    let at = chrono::DateTime::parse_from_rfc3339("2023-01-03T09:05:07+01:00").expect("date");
    assert_eq!(imap_date(at), " 3-Jan-2023 09:05:07 +0100");
}

#[test]
fn status_codes_decide_outcomes() {
    let over = parse_status("NO [OVERQUOTA] Quota exceeded (mailbox for user is full)");
    assert_eq!(over.code.as_deref(), Some("OVERQUOTA"));
    assert!(matches!(
        append_outcome(&over, "a@x.test", None),
        Outcome::Deferred { .. }
    ));
    let limit = parse_status("NO [LIMIT] too many");
    assert!(matches!(
        append_outcome(&limit, "a@x.test", None),
        Outcome::Deferred { .. }
    ));
    let none = parse_status("NO [TRYCREATE] Mailbox doesn't exist: INBOX");
    assert!(matches!(
        append_outcome(&none, "a@x.test", None),
        Outcome::Failed { ref status, .. } if status == "5.1.1"
    ));
    let ok = parse_status("OK [APPENDUID 1700000000 7] Append completed.");
    assert!(matches!(
        append_outcome(&ok, "a@x.test", None),
        Outcome::Delivered { .. }
    ));
}

#[test]
fn capabilities_and_literals_are_read() {
    let caps = capabilities("[CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] ready.");
    assert!(caps.contains(&"LITERAL+".to_string()));
    assert!(caps.contains(&"SASL-IR".to_string()));
    assert_eq!(literal_size("* 1 FETCH (BODY[] {42}"), Some(42));
    assert_eq!(literal_size("* OK no literal"), None);
}

#[test]
fn trace_ids_depend_on_content_and_canonical_mailbox() {
    assert_eq!(
        trace_id("abc", "bob@example.net"),
        trace_id("abc", &Mailbox::canonical_key("Bob@EXAMPLE.net"))
    );
    assert_ne!(
        trace_id("abc", "bob@example.net"),
        trace_id("abd", "bob@example.net")
    );
}

use super::super::testpeer::{Peer, Step};
use crate::deliver::wire::Timeouts;

const GREETING: &str = "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] ready\n";

fn store(peer: &Peer) -> Result<ImapStore, StoreError> {
    store_with(peer, Security::Plain, false)
}

fn store_with(peer: &Peer, security: Security, insecure: bool) -> Result<ImapStore, StoreError> {
    let options = ImapOptions {
        client: ClientOptions {
            hello_name: "replay.test".into(),
            timeouts: Timeouts {
                connect: Duration::from_secs(5),
                command: Duration::from_secs(3),
                data_end: Duration::from_secs(3),
            },
        },
        credentials: ImapCredentials {
            user: "replay".into(),
            password: "pw".into(),
        },
        insecure,
        proven: Proven::default(),
    };
    let target = ImapTarget {
        security,
        host: "127.0.0.1".into(),
        port: peer.port,
    };
    ImapStore::connect(target, options)
}

fn delivery(sender: &ReversePath) -> Delivery<'_> {
    Delivery {
        message_key: "0123abcd",
        sender,
        content: b"Subject: x\r\n\r\nbody\r\n",
        arrival: chrono::DateTime::parse_from_rfc3339("2023-01-23T10:00:00+01:00").unwrap(),
        recovering: false,
        envid: None,
        ret: None,
    }
}

/// The APPEND line and the 8 lines of the literal (our 4 header lines, the message's
/// 3, the CRLF that ends the command).
fn append_steps() -> Vec<Step> {
    let mut steps = vec![Step::Expect(
        "R2 APPEND INBOX () \"23-Jan-2023 10:00:00 +0100\" {",
    )];
    steps.extend(std::iter::repeat_n(Step::Expect(""), 8));
    steps
}

#[test]
fn a_connection_lost_after_the_message_is_uncertain_and_before_it_unavailable() {
    let mut after = vec![
        Step::Send(GREETING),
        Step::Expect("R1 AUTHENTICATE PLAIN "),
        Step::Send("R1 OK Logged in\n"),
    ];
    after.extend(append_steps());
    let peer = Peer::spawn(vec![
        vec![Step::Send(GREETING)],
        after,
        vec![Step::Send(GREETING), Step::Expect("R1 AUTHENTICATE")],
    ]);
    let mut s = store(&peer).unwrap();
    let sender = ReversePath::Address("s@x.test".into());
    let d = delivery(&sender);
    let out = s
        .deliver(&d, &[RecipientSpec::plain("bob@example.test")])
        .unwrap();
    assert!(matches!(out[0], Outcome::Uncertain { .. }), "{out:?}");
    // The next mailbox: the store drops the connection during AUTHENTICATE.
    let err = s.deliver(&d, &[RecipientSpec::plain("carol@example.test")]);
    assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
    let transcript = peer.transcript().join("\n");
    // The copy carried its date and our trace field.
    assert!(transcript.contains("Received: by replay.test (spoolreplay) with IMAP id SR"));
    assert!(transcript.contains("Delivered-To: bob@example.test"));
}

#[test]
fn a_refused_mailbox_defers_until_the_credentials_proved_good_then_fails_5_1_1() {
    let open = |n: &'static str| {
        vec![
            Step::Send(GREETING),
            Step::Expect("R1 AUTHENTICATE PLAIN "),
            Step::Send(n),
        ]
    };
    let mut alice = open("R1 OK Logged in\n");
    alice.extend(append_steps());
    alice.push(Step::Send("R2 OK [APPENDUID 1 1] Append completed.\n"));
    alice.push(Step::Expect("R3 LOGOUT"));
    let peer = Peer::spawn(vec![
        vec![Step::Send(GREETING)],
        open("R1 NO [AUTHENTICATIONFAILED] Authentication failed.\n"),
        alice,
        open("R1 NO [AUTHENTICATIONFAILED] Authentication failed.\n"),
    ]);
    let mut s = store(&peer).unwrap();
    let sender = ReversePath::Address("s@x.test".into());
    let d = delivery(&sender);
    let ghost = [RecipientSpec::plain("ghost@example.test")];
    let first = s.deliver(&d, &ghost).unwrap();
    assert!(matches!(first[0], Outcome::Deferred { .. }), "{first:?}");
    let ok = s
        .deliver(&d, &[RecipientSpec::plain("alice@example.test")])
        .unwrap();
    assert!(matches!(ok[0], Outcome::Delivered { .. }), "{ok:?}");
    let again = s.deliver(&d, &ghost).unwrap();
    assert!(
        matches!(&again[0], Outcome::Failed { status, .. } if status == "5.1.1"),
        "{again:?}"
    );
    drop(s);
    peer.transcript();
}

#[test]
fn starttls_and_imaps_are_used_and_certificates_checked() {
    // imap+starttls: CAPABILITY, STARTTLS, TLS, CAPABILITY again (what came before TLS
    // is forgotten), then AUTHENTICATE over TLS.
    let starttls = |then: Vec<Step>| {
        let mut s = vec![
            Step::Send("* OK ready\n"),
            Step::Expect("R1 CAPABILITY"),
            Step::Send("* CAPABILITY IMAP4rev1 STARTTLS\nR1 OK done\n"),
            Step::Expect("R2 STARTTLS"),
            Step::Send("R2 OK Begin TLS negotiation now.\n"),
            Step::StartTls,
            Step::Expect("R3 CAPABILITY"),
            Step::Send("* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN\nR3 OK done\n"),
        ];
        s.extend(then);
        s
    };
    let mut deliver = starttls(vec![Step::Expect("R4 AUTHENTICATE PLAIN ")]);
    deliver.push(Step::Send("R4 OK Logged in\n"));
    deliver.push(Step::Expect("R5 APPEND INBOX () "));
    deliver.extend(std::iter::repeat_n(Step::Expect(""), 8));
    deliver.push(Step::Send("R5 OK [APPENDUID 1 1] Append completed.\n"));
    deliver.push(Step::Expect("R6 LOGOUT"));
    let peer = Peer::spawn(vec![starttls(vec![]), deliver]);
    let mut s = store_with(&peer, Security::StartTls, true).unwrap();
    let sender = ReversePath::Address("s@x.test".into());
    let out = s
        .deliver(
            &delivery(&sender),
            &[RecipientSpec::plain("bob@example.test")],
        )
        .unwrap();
    assert!(matches!(out[0], Outcome::Delivered { .. }), "{out:?}");
    drop(s);
    peer.transcript();
    // imaps without --insecure-tls: the self-signed test certificate is refused.
    let peer = Peer::spawn(vec![vec![
        Step::StartTls,
        Step::Send(GREETING),
        Step::AwaitClose,
    ]]);
    match store_with(&peer, Security::Tls, false) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("certificate"), "{m}"),
        other => panic!("{other:?}"),
    }
    drop(peer);
}

#[test]
fn an_endless_greeting_is_refused_after_a_bounded_read() {
    let peer = Peer::spawn(vec![vec![Step::Endless]]);
    let err = store(&peer).unwrap_err().to_string();
    assert!(err.contains("too long"), "{err}");
    let transcript = peer.transcript();
    let sent: usize = transcript
        .iter()
        .find_map(|l| l.strip_prefix("ENDLESS:"))
        .and_then(|n| n.parse().ok())
        .expect("endless count");
    assert!(sent < 64 * 1024 * 1024, "the client read it all: {sent}");
}

#[test]
fn no_password_in_clear_to_a_host_that_is_not_loopback() {
    let options = ImapOptions {
        client: ClientOptions::default(),
        credentials: ImapCredentials {
            user: "replay".into(),
            password: "pw".into(),
        },
        insecure: false,
        proven: Proven::default(),
    };
    let target: ImapTarget = "imap://192.0.2.1".parse().unwrap();
    match ImapStore::connect(target, options) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("without TLS"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn addresses_that_could_inject_are_refused() {
    assert_eq!(checked_mailbox("a@x.test"), Some("a@x.test".to_string()));
    assert_eq!(checked_mailbox("a\r\n@x.test"), None);
    assert_eq!(checked_mailbox("a\0b@x.test"), None);
}

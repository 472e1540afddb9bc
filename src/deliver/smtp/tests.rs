//! The SMTP client against a scripted peer on loopback.

use std::time::Duration;

use super::wire::Timeouts;
use super::*;
use crate::address::{Notify, ReturnContent, ReversePath};
use crate::deliver::testpeer::{
    Peer, Step,
    Step::{Expect, Send},
};

const GREETING: &str = "220 sink.example.test ESMTP\n";
const EHLO_DSN: &str = "250-sink.example.test\n250-PIPELINING\n250-8BITMIME\n250 DSN\n";
const EHLO_PLAIN: &str = "250-sink.example.test\n250 PIPELINING\n";

fn options() -> SmtpOptions {
    SmtpOptions {
        client: ClientOptions {
            hello_name: "replay.example.test".into(),
            timeouts: Timeouts {
                connect: Duration::from_secs(2),
                command: Duration::from_millis(500),
                data_end: Duration::from_millis(500),
            },
        },
        credentials: None,
        insecure: false,
    }
}

fn store(peer: &Peer) -> SmtpStore {
    let target = SmtpTarget {
        security: Security::Plain,
        host: "127.0.0.1".into(),
        port: peer.port,
    };
    SmtpStore::connect(target, options()).expect("connects to the scripted peer")
}

/// Greeting and EHLO.
fn hello(ehlo: &'static str) -> Vec<Step> {
    vec![
        Send(GREETING),
        Expect("EHLO replay.example.test"),
        Send(ehlo),
    ]
}

fn script(parts: &[&[Step]]) -> Vec<Step> {
    parts.iter().flat_map(|p| p.iter().cloned()).collect()
}

fn delivery<'a>(sender: &'a ReversePath, content: &'a [u8]) -> Delivery<'a> {
    Delivery {
        message_key: "k",
        sender,
        content,
        arrival: chrono::DateTime::parse_from_rfc3339("2023-01-23T10:00:00+01:00").unwrap(),
        recovering: false,
        envid: Some("QID+1"),
        ret: Some(ReturnContent::Headers),
    }
}

fn sender() -> ReversePath {
    ReversePath::Address("s@remote.test".into())
}

fn with_dsn(address: &str) -> RecipientSpec<'_> {
    RecipientSpec {
        address,
        orcpt: Some("rfc822;Orig@example.test"),
        notify: Some(Notify {
            failure: true,
            delay: true,
            ..Notify::default()
        }),
    }
}

#[test]
fn targets_parse_and_display() {
    let t: SmtpTarget = "smtp://mx.example.test".parse().unwrap();
    assert_eq!((t.security, t.port), (Security::Plain, 25));
    let t: SmtpTarget = "smtp+starttls://mx.example.test:587".parse().unwrap();
    assert_eq!((t.security, t.port), (Security::StartTls, 587));
    assert_eq!(t.to_string(), "smtp+starttls://mx.example.test:587");
    let t: SmtpTarget = "smtps://[::1]".parse().unwrap();
    assert_eq!(
        (t.security, t.host.as_str(), t.port),
        (Security::Tls, "::1", 465)
    );
    assert_eq!(t.to_string(), "smtps://[::1]:465");
    for bad in [
        "smtp://",
        "smtp:host",
        "smtp://u:p@host",
        "smtp://h:0",
        "lmtp://h",
    ] {
        assert!(bad.parse::<SmtpTarget>().is_err(), "{bad}");
    }
}

#[test]
fn credentials_come_from_the_environment_or_a_file() {
    let none = SmtpCredentials::from_vars(|_| None).unwrap();
    assert_eq!(none, None);
    let pair = SmtpCredentials::from_vars(|k| match k {
        ENV_USER => Some("relay".into()),
        ENV_PASSWORD => Some("s3cret:x".into()),
        _ => None,
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        (pair.user.as_str(), pair.password.as_str()),
        ("relay", "s3cret:x")
    );
    assert!(!format!("{pair:?}").contains("s3cret"));
    let half = SmtpCredentials::from_vars(|k| (k == ENV_USER).then(|| "relay".into()));
    assert!(half.unwrap_err().contains(ENV_PASSWORD));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("creds");
    std::fs::write(&file, "fileuser:pa:ss\n").unwrap();
    let path = file.display().to_string();
    let from_file = SmtpCredentials::from_vars(|k| (k == ENV_FILE).then(|| path.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(
        (from_file.user.as_str(), from_file.password.as_str()),
        ("fileuser", "pa:ss")
    );
    std::fs::write(&file, "no colon\n").unwrap();
    let bad = SmtpCredentials::from_vars(|k| (k == ENV_FILE).then(|| path.clone()));
    assert!(bad.unwrap_err().contains("user:password"));
}

#[test]
fn refused_recipients_get_their_own_outcome_and_dsn_parameters_are_sent() {
    let peer = Peer::spawn(vec![script(&[
        &hello(EHLO_DSN),
        &[
            Expect("MAIL FROM:<s@remote.test> BODY=8BITMIME RET=HDRS ENVID=QID+2B1"),
            Send("250 2.1.0 Ok\n"),
            Expect("RCPT TO:<a@example.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;Orig@example.test"),
            Send("250 2.1.5 Ok\n"),
            Expect("RCPT TO:<b@example.test>"),
            Send("550 5.1.1 <b@example.test>: Recipient address rejected\n"),
            Expect("RCPT TO:<c@example.test>"),
            Send("452 4.2.2 <c@example.test>: mailbox full\n"),
            Expect("RCPT TO:<d@example.test>"),
            Send("250 2.1.5 Ok\n"),
            Expect("DATA"),
            Send("354 End data with <CR><LF>.<CR><LF>\n"),
            Step::Data,
            Send("250 2.0.0 Ok: queued as 4Qx\n"),
            Expect("QUIT"),
            Send("221 2.0.0 Bye\n"),
        ],
    ])]);
    let mut store = store(&peer);
    let s = sender();
    let content = "Subject: \u{e9}t\u{e9}\r\n\r\n.dot\nlast\n".as_bytes();
    let rcpts = [
        with_dsn("a@example.test"),
        with_dsn("b@example.test"),
        with_dsn("c@example.test"),
        RecipientSpec::plain("d@example.test"),
    ];
    let got = store.deliver(&delivery(&s, content), &rcpts).unwrap();
    let remote = Some("sink.example.test".to_string());
    let queued = Outcome::Delivered {
        detail: "250 2.0.0 Ok: queued as 4Qx".into(),
        remote: remote.clone(),
    };
    assert_eq!(
        got,
        vec![
            queued.clone(),
            Outcome::Failed {
                reply: "550 5.1.1 <b@example.test>: Recipient address rejected".into(),
                status: "5.1.1".into(),
                remote: remote.clone()
            },
            Outcome::Deferred {
                reply: "452 4.2.2 <c@example.test>: mailbox full".into(),
                remote
            },
            queued,
        ]
    );
    drop(store);
    let t = peer.transcript();
    let data: Vec<&str> = t.iter().filter_map(|l| l.strip_prefix("DATA:")).collect();
    assert_eq!(data, ["Subject: \u{e9}t\u{e9}", "", "..dot", "last"]);
    assert!(t.contains(&"RCPT TO:<d@example.test>".to_string()), "{t:?}");
}

#[test]
fn without_dsn_and_8bitmime_no_parameters_are_sent() {
    let peer = Peer::spawn(vec![script(&[
        &hello(EHLO_PLAIN),
        &[
            Expect("MAIL FROM:<>"),
            Send("250 Ok\n"),
            Expect("RCPT TO:<a@example.test>"),
            Send("250 Ok\n"),
            Expect("DATA"),
            Send("354 go\n"),
            Step::Data,
            Send("250 Ok\n"),
            Expect("QUIT"),
        ],
    ])]);
    let mut store = store(&peer);
    let null = ReversePath::Null;
    let got = store
        .deliver(&delivery(&null, b"x\n"), &[with_dsn("a@example.test")])
        .unwrap();
    assert!(matches!(&got[0], Outcome::Delivered { .. }), "{got:?}");
    drop(store);
    let t = peer.transcript();
    assert!(t.contains(&"MAIL FROM:<>".to_string()), "{t:?}");
    assert!(t.contains(&"RCPT TO:<a@example.test>".to_string()), "{t:?}");
}

#[test]
fn a_cut_after_the_final_dot_is_uncertain_and_a_421_defers_the_rest() {
    let peer = Peer::spawn(vec![
        script(&[
            &hello(EHLO_PLAIN),
            &[
                Expect("MAIL FROM:<s@remote.test>"),
                Send("250 Ok\n"),
                Expect("RCPT TO:<a@example.test>"),
                Send("250 Ok\n"),
                Expect("DATA"),
                Send("354 go\n"),
                Step::Data,
            ],
        ]),
        script(&[
            &hello(EHLO_PLAIN),
            &[
                Expect("MAIL FROM:<s@remote.test>"),
                Send("250 Ok\n"),
                Expect("RCPT TO:<a@example.test>"),
                Send("421 4.3.2 Service shutting down\n"),
            ],
        ]),
    ]);
    let mut store = store(&peer);
    let s = sender();
    let one = [RecipientSpec::plain("a@example.test")];
    let got = store.deliver(&delivery(&s, b"x\n"), &one).unwrap();
    assert!(
        matches!(&got[0], Outcome::Uncertain { reply, .. } if reply.contains("may have delivered")),
        "{got:?}"
    );
    let two = [
        RecipientSpec::plain("a@example.test"),
        RecipientSpec::plain("b@example.test"),
    ];
    let got = store.deliver(&delivery(&s, b"x\n"), &two).unwrap();
    for o in &got {
        assert!(
            matches!(o, Outcome::Deferred { reply, .. } if reply == "421 4.3.2 Service shutting down"),
            "{got:?}"
        );
    }
    assert_eq!(store.connections_opened(), 2);
    drop(store);
    peer.transcript();
}

#[test]
fn a_refusing_greeting_makes_the_store_unavailable() {
    let peer = Peer::spawn(vec![vec![Send("554 5.3.2 no service\n")]]);
    let target = SmtpTarget {
        security: Security::Plain,
        host: "127.0.0.1".into(),
        port: peer.port,
    };
    match SmtpStore::connect(target, options()) {
        Err(StoreError::Unavailable(m)) => {
            assert!(
                m.contains(&format!("smtp://127.0.0.1:{}", peer.port)),
                "{m}"
            );
            assert!(m.contains("554"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    peer.transcript();
}

#[test]
fn credentials_are_not_sent_without_tls() {
    let peer = Peer::spawn(vec![script(&[&hello(
        "250-sink.example.test\n250 AUTH PLAIN LOGIN\n",
    )])]);
    let target = SmtpTarget {
        security: Security::Plain,
        host: "127.0.0.1".into(),
        port: peer.port,
    };
    let mut opts = options();
    opts.credentials = Some(SmtpCredentials {
        user: "relay".into(),
        password: "pw".into(),
    });
    match SmtpStore::connect(target, opts) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("without TLS"), "{m}"),
        other => panic!("{other:?}"),
    }
    peer.transcript();
}

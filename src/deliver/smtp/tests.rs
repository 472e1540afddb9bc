//! The SMTP client against a scripted peer on loopback.

use std::time::Duration;

use super::wire::Timeouts;
use super::*;
use crate::address::{Notify, ReturnContent, ReversePath};
use crate::deliver::testpeer::{
    Peer, Step,
    Step::{Expect, Send},
    said,
};
use crate::deliver::{Deliverer, Delivery, Outcome, RecipientSpec};

const GREETING: &str = "220 sink.example.test ESMTP\n";
const EHLO_DSN: &str = "250-sink.example.test\n250-PIPELINING\n250-8BITMIME\n250 DSN\n";
const EHLO_PLAIN: &str = "250-sink.example.test\n250 PIPELINING\n";
/// EHLO without PIPELINING: the client waits for each reply before the next command.
const EHLO_LOCKSTEP: &str = "250-sink.example.test\n250 8BITMIME\n";

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
        envid: Some("QID+1"),
        ret: Some(ReturnContent::Headers),
        ..Delivery::new(
            "k",
            sender,
            content,
            chrono::DateTime::parse_from_rfc3339("2023-01-23T10:00:00+01:00").unwrap(),
        )
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
    let none = SmtpCredentials::from_vars(&CREDENTIAL_VARS, |_| None).unwrap();
    assert_eq!(none, None);
    let pair = SmtpCredentials::from_vars(&CREDENTIAL_VARS, |k| match k {
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
    let half = SmtpCredentials::from_vars(&CREDENTIAL_VARS, |k| {
        (k == ENV_USER).then(|| "relay".into())
    });
    assert!(half.unwrap_err().contains(ENV_PASSWORD));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("creds");
    std::fs::write(&file, "fileuser:pa:ss\n").unwrap();
    let path = file.display().to_string();
    let from_file =
        SmtpCredentials::from_vars(&CREDENTIAL_VARS, |k| (k == ENV_FILE).then(|| path.clone()))
            .unwrap()
            .unwrap();
    assert_eq!(
        (from_file.user.as_str(), from_file.password.as_str()),
        ("fileuser", "pa:ss")
    );
    std::fs::write(&file, "no colon\n").unwrap();
    let bad =
        SmtpCredentials::from_vars(&CREDENTIAL_VARS, |k| (k == ENV_FILE).then(|| path.clone()));
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
                reply: said("550 5.1.1 <b@example.test>: Recipient address rejected"),
                status: "5.1.1".into(),
                remote: remote.clone()
            },
            Outcome::Deferred {
                reply: said("452 4.2.2 <c@example.test>: mailbox full"),
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
        matches!(&got[0], Outcome::Uncertain { reply, .. } if reply.to_string().contains("may have delivered")),
        "{got:?}"
    );
    let two = [
        RecipientSpec::plain("a@example.test"),
        RecipientSpec::plain("b@example.test"),
    ];
    let got = store.deliver(&delivery(&s, b"x\n"), &two).unwrap();
    for o in &got {
        assert!(
            matches!(o, Outcome::Deferred { reply, .. } if reply.to_string() == "421 4.3.2 Service shutting down"),
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

/// MAIL, one RCPT, DATA and the body, all accepted: what comes after is the test's.
fn up_to_the_dot() -> Vec<Step> {
    vec![
        Expect("MAIL FROM:<s@remote.test>"),
        Send("250 2.1.0 Ok\n"),
        Expect("RCPT TO:<a@example.test>"),
        Send("250 2.1.5 Ok\n"),
        Expect("DATA"),
        Send("354 go\n"),
        Step::Data,
    ]
}

fn deliver_one(store: &mut SmtpStore) -> Outcome {
    let s = sender();
    let mut got = store
        .deliver(
            &delivery(&s, b"Subject: x\n\nbody\n"),
            &[RecipientSpec::plain("a@example.test")],
        )
        .expect("a transaction, not a store error");
    assert_eq!(got.len(), 1);
    got.remove(0)
}

#[test]
fn an_endless_reply_line_after_the_dot_is_refused_as_too_long_and_uncertain() {
    let peer = Peer::spawn(vec![script(&[
        &hello(EHLO_PLAIN),
        &up_to_the_dot(),
        &[Step::Endless],
    ])]);
    let mut store = store(&peer);
    let got = deliver_one(&mut store);
    assert!(
        matches!(&got, Outcome::Uncertain { reply, .. }
            if reply.to_string().contains("reply too long: a line of more than 4096 octets")),
        "{got:?}"
    );
    drop(store);
    let t = peer.transcript();
    assert!(t.iter().any(|l| l.starts_with("ENDLESS:")), "{t:?}");
}

#[test]
fn an_endless_reply_line_before_the_dot_defers_and_an_endless_greeting_is_unavailable() {
    let peer = Peer::spawn(vec![
        script(&[
            &hello(EHLO_PLAIN),
            &[Expect("MAIL FROM:<s@remote.test>"), Step::Endless],
        ]),
        vec![Step::Endless],
    ]);
    let mut store = store(&peer);
    let got = deliver_one(&mut store);
    assert!(
        matches!(&got, Outcome::Deferred { reply, .. }
            if reply.to_string().contains("at MAIL FROM: reply too long")),
        "{got:?}"
    );
    // The next message opens a connection whose greeting never ends.
    let s = sender();
    match store.deliver(
        &delivery(&s, b"x\n"),
        &[RecipientSpec::plain("a@example.test")],
    ) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("reply too long"), "{m}"),
        other => panic!("{other:?}"),
    }
    drop(store);
    peer.transcript();
}

#[test]
fn a_reply_dripped_a_byte_at_a_time_is_one_deadline_not_one_per_read() {
    // 14 bytes 100 ms apart: every read gets a byte well within the 500 ms timeout, the
    // reply as a whole does not.
    let gap = Duration::from_millis(100);
    let peer = Peer::spawn(vec![
        script(&[
            &hello(EHLO_PLAIN),
            &[
                Expect("MAIL FROM:<s@remote.test>"),
                Step::Drip("250 2.1.0 Ok\n", gap),
            ],
        ]),
        script(&[
            &hello(EHLO_PLAIN),
            &up_to_the_dot(),
            &[Step::Drip("250 2.0.0 Ok\n", gap)],
        ]),
        vec![Step::Drip(GREETING, gap)],
    ]);
    let mut store = store(&peer);
    let got = deliver_one(&mut store);
    assert!(
        matches!(&got, Outcome::Deferred { reply, .. }
            if reply.to_string() == "connection lost at MAIL FROM: no answer within 500ms"),
        "{got:?}"
    );
    let got = deliver_one(&mut store);
    assert!(
        matches!(&got, Outcome::Uncertain { reply, .. } if reply.to_string().contains("no answer within")),
        "{got:?}"
    );
    let s = sender();
    match store.deliver(
        &delivery(&s, b"x\n"),
        &[RecipientSpec::plain("a@example.test")],
    ) {
        Err(StoreError::Unavailable(m)) => assert!(
            m.contains("timed out waiting for the greeting (500ms, --reply-timeout)"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    drop(store);
    peer.transcript();
}

#[test]
fn a_550_that_is_not_utf8_keeps_its_code_at_rcpt_and_after_the_dot() {
    let peer = Peer::spawn(vec![script(&[
        &hello(EHLO_PLAIN),
        &[
            Expect("MAIL FROM:<s@remote.test>"),
            Send("250 2.1.0 Ok\n"),
            Expect("RCPT TO:<a@example.test>"),
            Step::SendRaw(b"550 5.1.1 <a@example.test> unknown \x9b user\r\n"),
            Expect("RCPT TO:<b@example.test>"),
            Send("250 2.1.5 Ok\n"),
            Expect("DATA"),
            Send("354 go\n"),
            Step::Data,
            Step::SendRaw(b"554 5.6.0 \x9b\xff content refused\r\n"),
            Expect("QUIT"),
        ],
    ])]);
    let mut store = store(&peer);
    let s = sender();
    let got = store
        .deliver(
            &delivery(&s, b"x\n"),
            &[
                RecipientSpec::plain("a@example.test"),
                RecipientSpec::plain("b@example.test"),
            ],
        )
        .unwrap();
    let remote = Some("sink.example.test".to_string());
    assert_eq!(
        got,
        vec![
            Outcome::Failed {
                reply: said("550 5.1.1 <a@example.test> unknown \u{fffd} user"),
                status: "5.1.1".into(),
                remote: remote.clone(),
            },
            Outcome::Failed {
                reply: said("554 5.6.0 \u{fffd}\u{fffd} content refused"),
                status: "5.6.0".into(),
                remote,
            },
        ]
    );
    // The connection was kept (a reply, however odd its bytes, is not a broken line).
    assert_eq!(store.connections_opened(), 1);
    drop(store);
    let t = peer.transcript();
    assert_eq!(t.last().map(String::as_str), Some("QUIT"), "{t:?}");
}

#[test]
fn the_enhanced_code_of_a_cyrus_multi_line_550_is_on_its_last_line() {
    let peer = Peer::spawn(vec![script(&[
        &hello(EHLO_LOCKSTEP),
        &[
            Expect("MAIL FROM:<s@remote.test>"),
            Send("250 2.1.0 Ok\n"),
            Expect("RCPT TO:<a@example.test>"),
            Send(
                "550-Mailbox unknown.  Either there is no mailbox associated with this\n\
                 550-name or you do not have authorization to see it.\n\
                 550 5.1.1 User unknown\n",
            ),
            Expect("RSET"),
            Send("250 Ok\n"),
            Expect("QUIT"),
        ],
    ])]);
    let mut store = store(&peer);
    let got = deliver_one(&mut store);
    assert!(
        matches!(&got, Outcome::Failed { status, reply, .. }
            if status == "5.1.1" && reply.to_string().starts_with("550 5.1.1 Mailbox unknown.")),
        "{got:?}"
    );
    drop(store);
    peer.transcript();
}

/// Pipelined (RFC 2920), the 550 arrives between MAIL's 250 and DATA's 554: the RCPT's
/// reply is read as a whole (multi-line), and DATA's refusal is not taken for it.
#[test]
fn a_pipelined_multi_line_rcpt_refusal_is_read_whole() {
    let peer = Peer::spawn(vec![script(&[
        &hello(EHLO_PLAIN),
        &[
            Expect("MAIL FROM:<s@remote.test>"),
            Expect("RCPT TO:<a@example.test>"),
            Expect("DATA"),
            Send(
                "250 2.1.0 Ok\n\
                 550-Mailbox unknown.  Either there is no mailbox associated with this\n\
                 550-name or you do not have authorization to see it.\n\
                 550 5.1.1 User unknown\n\
                 554 5.5.1 Error: no valid recipients\n",
            ),
            Expect("RSET"),
            Send("250 Ok\n"),
            Expect("QUIT"),
        ],
    ])]);
    let mut store = store(&peer);
    let got = deliver_one(&mut store);
    assert!(
        matches!(&got, Outcome::Failed { status, reply, .. }
            if status == "5.1.1" && reply.to_string().starts_with("550 5.1.1 Mailbox unknown.")),
        "{got:?}"
    );
    drop(store);
    peer.transcript();
}

/// `user` and `pw` as AUTH PLAIN sends them: base64 of NUL user NUL password.
const PLAIN_RELAY_PW: &str = "AUTH PLAIN AHJlbGF5AHB3";

fn tls_store(peer: &Peer, security: Security, insecure: bool) -> Result<SmtpStore, StoreError> {
    let target = SmtpTarget {
        security,
        host: "127.0.0.1".into(),
        port: peer.port,
    };
    let mut opts = options();
    opts.insecure = insecure;
    opts.credentials = Some(SmtpCredentials {
        user: "relay".into(),
        password: "pw".into(),
    });
    SmtpStore::connect(target, opts)
}

#[test]
fn starttls_then_auth_plain_then_mail_over_tls() {
    let peer = Peer::spawn(vec![script(&[
        &[
            Send(GREETING),
            Expect("EHLO replay.example.test"),
            Send("250-sink.example.test\n250-STARTTLS\n250 AUTH LOGIN\n"),
            Expect("STARTTLS"),
            Send("220 2.0.0 Ready to start TLS\n"),
            Step::StartTls,
            Expect("EHLO replay.example.test"),
            Send("250-sink.example.test\n250-AUTH PLAIN LOGIN\n250 DSN\n"),
            Expect(PLAIN_RELAY_PW),
            Send("235 2.7.0 Authentication successful\n"),
        ],
        &[
            Expect("MAIL FROM:<s@remote.test> RET=HDRS ENVID=QID+2B1"),
            Send("250 2.1.0 Ok\n"),
            Expect("RCPT TO:<a@example.test>"),
            Send("250 2.1.5 Ok\n"),
            Expect("DATA"),
            Send("354 go\n"),
            Step::Data,
            Send("250 2.0.0 Ok: queued as T1\n"),
            Expect("QUIT"),
            Send("221 Bye\n"),
        ],
    ])]);
    let mut store = tls_store(&peer, Security::StartTls, true).expect("STARTTLS and AUTH");
    let got = deliver_one(&mut store);
    assert!(
        matches!(&got, Outcome::Delivered { detail, .. } if detail == "250 2.0.0 Ok: queued as T1"),
        "{got:?}"
    );
    drop(store);
    let t = peer.transcript();
    assert!(t.contains(&"DATA:body".to_string()), "{t:?}");
}

#[test]
fn smtps_with_auth_login() {
    let peer = Peer::spawn(vec![script(&[
        &[
            Step::StartTls,
            Send(GREETING),
            Expect("EHLO replay.example.test"),
            Send("250-sink.example.test\n250 AUTH=LOGIN\n"),
            Expect("AUTH LOGIN"),
            Send("334 VXNlcm5hbWU6\n"),
            Expect("cmVsYXk="),
            Send("334 UGFzc3dvcmQ6\n"),
            Expect("cHc="),
            Send("235 2.7.0 ok\n"),
        ],
        &up_to_the_dot(),
        &[Send("250 2.0.0 Ok\n"), Expect("QUIT")],
    ])]);
    let mut store = tls_store(&peer, Security::Tls, true).expect("SMTPS and AUTH LOGIN");
    assert!(matches!(deliver_one(&mut store), Outcome::Delivered { .. }));
    drop(store);
    peer.transcript();
}

#[test]
fn an_untrusted_certificate_or_a_refused_password_is_unavailable() {
    // Without --insecure-tls the self-signed test certificate is refused.
    let peer = Peer::spawn(vec![vec![Step::StartTls, Send(GREETING), Step::AwaitClose]]);
    match tls_store(&peer, Security::Tls, false) {
        Err(StoreError::Unavailable(m)) => {
            assert!(m.contains("the TLS handshake failed"), "{m}");
            assert!(m.contains("certificate"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // The peer's side of the failed handshake is an error: its transcript is not asked for.
    drop(peer);
    let peer = Peer::spawn(vec![vec![
        Step::StartTls,
        Send(GREETING),
        Expect("EHLO"),
        Send("250-sink.example.test\n250 AUTH PLAIN\n"),
        Expect(PLAIN_RELAY_PW),
        Send("535 5.7.8 Authentication credentials invalid\n"),
        Step::AwaitClose,
    ]]);
    match tls_store(&peer, Security::Tls, true) {
        Err(StoreError::Unavailable(m)) => {
            assert!(m.contains("authentication as `relay` failed"), "{m}");
            assert!(m.contains("535 5.7.8"), "{m}");
            assert!(!m.contains("pw"), "the password leaked: {m}");
        }
        other => panic!("{other:?}"),
    }
    peer.transcript();
}

#[test]
fn a_server_without_ehlo_gets_helo_and_plain_commands() {
    let peer = Peer::spawn(vec![script(&[
        &[
            Send(GREETING),
            Expect("EHLO replay.example.test"),
            Send("502 5.5.2 Error: command not recognized\n"),
            Expect("HELO replay.example.test"),
            Send("250 sink.example.test\n"),
        ],
        &up_to_the_dot(),
        &[Send("250 Ok\n"), Expect("QUIT")],
    ])]);
    let mut store = store(&peer);
    // No DSN parameters: HELO offers no extensions.
    assert!(matches!(deliver_one(&mut store), Outcome::Delivered { .. }));
    drop(store);
    peer.transcript();
}

#[test]
fn starttls_missing_or_followed_by_injected_bytes_is_refused() {
    let peer = Peer::spawn(vec![
        script(&[&hello(EHLO_PLAIN), &[Step::AwaitClose]]),
        // CVE-2011-0411: a command smuggled after the 220, to be read as if it came over TLS.
        script(&[
            &hello("250-sink.example.test\n250 STARTTLS\n"),
            &[
                Expect("STARTTLS"),
                Send("220 2.0.0 Ready\n250 2.0.0 injected\n"),
                Step::AwaitClose,
            ],
        ]),
    ]);
    for expected in [
        "the server does not offer STARTTLS",
        "the server sent more after its answer to STARTTLS",
    ] {
        match tls_store(&peer, Security::StartTls, true) {
            Err(StoreError::Unavailable(m)) => assert!(m.contains(expected), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    peer.transcript();
}

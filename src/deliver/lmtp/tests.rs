//! The LMTP client against a scripted peer on loopback.

use std::time::Duration;

use super::*;
use crate::address::ReversePath;
use crate::deliver::testpeer::{Peer, Step::*, said};
use crate::deliver::wire::Timeouts;
use crate::deliver::{Deliverer, Delivery, Outcome, RecipientSpec};

const LHLO_REPLY: &str =
    "250-mx.example.test\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250 PIPELINING\n";
const GREETING: &str = "220 mx.example.test Dovecot (Debian) ready.\n";

fn options() -> ClientOptions {
    ClientOptions {
        hello_name: "replay.example.test".into(),
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            command: Duration::from_millis(500),
            data_end: Duration::from_millis(500),
        },
    }
}

fn store(peer: &Peer) -> LmtpStore {
    let target = LmtpTarget::Tcp {
        host: "127.0.0.1".into(),
        port: peer.port,
    };
    LmtpStore::connect(target, options()).expect("connects to the scripted peer")
}

fn delivery<'a>(sender: &'a ReversePath, content: &'a [u8]) -> Delivery<'a> {
    Delivery {
        envid: Some("E1"),
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

/// LHLO without PIPELINING: the client waits for each reply before the next command.
const LHLO_LOCKSTEP: &str = "250-mx.example.test\n250 8BITMIME\n";

/// The opening of a server that does not pipeline.
fn hello_lockstep() -> Vec<crate::deliver::testpeer::Step> {
    vec![
        Send(GREETING),
        Expect("LHLO replay.example.test"),
        Send(LHLO_LOCKSTEP),
    ]
}

/// The opening every connection starts with.
fn hello() -> Vec<crate::deliver::testpeer::Step> {
    vec![
        Send(GREETING),
        Expect("LHLO replay.example.test"),
        Send(LHLO_REPLY),
    ]
}

fn script(parts: &[&[crate::deliver::testpeer::Step]]) -> Vec<crate::deliver::testpeer::Step> {
    parts.iter().flat_map(|p| p.iter().cloned()).collect()
}

fn remote() -> Option<String> {
    Some("mx.example.test".into())
}

#[test]
fn targets_parse_and_display() {
    let t: LmtpTarget = "lmtp://mail.example.test".parse().unwrap();
    assert_eq!(
        t,
        LmtpTarget::Tcp {
            host: "mail.example.test".into(),
            port: 24
        }
    );
    assert_eq!(t.to_string(), "lmtp://mail.example.test:24");
    let t: LmtpTarget = "lmtp://[::1]:2424".parse().unwrap();
    assert_eq!(
        t,
        LmtpTarget::Tcp {
            host: "::1".into(),
            port: 2424
        }
    );
    assert_eq!(t.to_string(), "lmtp://[::1]:2424");
    let t: LmtpTarget = "lmtp:/run/dovecot/lmtp".parse().unwrap();
    assert_eq!(t, LmtpTarget::Unix("/run/dovecot/lmtp".into()));
    assert_eq!(t.to_string(), "lmtp:/run/dovecot/lmtp");
    for bad in [
        "lmtp://",
        "lmtp://h:0",
        "lmtp://h:x",
        "lmtp://h:99999",
        "lmtp://u@h",
        "lmtp://h/x",
        "lmtp:relative",
        "smtp://h",
        "lmtp://[::1",
    ] {
        assert!(bad.parse::<LmtpTarget>().is_err(), "{bad}");
    }
}

#[test]
fn one_reply_per_accepted_recipient_in_order() {
    let peer = Peer::spawn(vec![script(&[
        &hello(),
        &[
            Expect("MAIL FROM:<s@remote.test> BODY=8BITMIME"),
            Send("250 2.1.0 OK\n"),
            Expect("RCPT TO:<alice@example.test>"),
            Send("250 2.1.5 OK\n"),
            Expect("RCPT TO:<nobody@example.test>"),
            Send("550 5.1.1 <nobody@example.test> User doesn't exist: nobody@example.test\n"),
            Expect("RCPT TO:<full@example.test>"),
            Send("250 2.1.5 OK\n"),
            Expect("RCPT TO:<bob@example.test>"),
            Send("250 2.1.5 OK\n"),
            Expect("DATA"),
            Send("354 OK\n"),
            Data,
            Send("250 2.0.0 <alice@example.test> Xssr Saved\n"),
            Send(
                "452-4.2.2 <full@example.test> Quota exceeded\n452 4.2.2 (mailbox for user is full)\n",
            ),
            Send("250 2.0.0 <bob@example.test> Yabc Saved\n"),
            Expect("QUIT"),
            Send("221 2.0.0 Bye\n"),
        ],
    ])]);
    let mut store = store(&peer);
    let s = sender();
    let content = "Subject: caf\u{e9}\n\n.leading dot\nbody\n".as_bytes();
    let got = store
        .deliver(
            &delivery(&s, content),
            &specs(&[
                "alice@example.test",
                "nobody@example.test",
                "full@example.test",
                "bob@example.test",
            ]),
        )
        .unwrap();
    assert_eq!(
        got,
        vec![
            Outcome::Delivered {
                detail: "250 2.0.0 <alice@example.test> Xssr Saved".into(),
                remote: remote()
            },
            Outcome::Failed {
                reply: said(
                    "550 5.1.1 <nobody@example.test> User doesn't exist: nobody@example.test"
                ),
                status: "5.1.1".into(),
                remote: remote()
            },
            Outcome::Deferred {
                reply: said(
                    "452-4.2.2 <full@example.test> Quota exceeded\n452 4.2.2 (mailbox for user is full)\n"
                ),
                remote: remote()
            },
            Outcome::Delivered {
                detail: "250 2.0.0 <bob@example.test> Yabc Saved".into(),
                remote: remote()
            },
        ]
    );
    drop(store);
    let transcript = peer.transcript();
    // No DSN, no SMTPUTF8 offered: no ENVID, no NOTIFY/ORCPT; CRLF and dot-stuffing on DATA.
    assert!(transcript.contains(&"MAIL FROM:<s@remote.test> BODY=8BITMIME".to_string()));
    assert!(transcript.contains(&"RCPT TO:<alice@example.test>".to_string()));
    let data: Vec<&str> = transcript
        .iter()
        .filter_map(|l| l.strip_prefix("DATA:"))
        .collect();
    assert_eq!(data, ["Subject: caf\u{e9}", "", "..leading dot", "body"]);
}

#[test]
fn a_421_mid_batch_defers_the_rest_and_the_next_message_reconnects() {
    let peer = Peer::spawn(vec![
        script(&[
            &hello(),
            &[
                Expect("MAIL FROM:<s@remote.test>"),
                Send("250 2.1.0 OK\n"),
                Expect("RCPT TO:<a@example.test>"),
                Send("250 2.1.5 OK\n"),
                Expect("RCPT TO:<b@example.test>"),
                Send("421 4.3.2 mx.example.test Shutting down\n"),
            ],
        ]),
        script(&[
            &hello(),
            &[
                Expect("MAIL FROM:<s@remote.test>"),
                Send("250 2.1.0 OK\n"),
                Expect("RCPT TO:<a@example.test>"),
                Send("250 2.1.5 OK\n"),
                Expect("DATA"),
                Send("354 OK\n"),
                Data,
                Send("250 2.0.0 <a@example.test> Saved\n"),
                Expect("QUIT"),
            ],
        ]),
    ]);
    let mut store = store(&peer);
    let s = sender();
    let first = store
        .deliver(
            &delivery(&s, b"x\n"),
            &specs(&["a@example.test", "b@example.test", "c@example.test"]),
        )
        .unwrap();
    let shutting = Outcome::Deferred {
        reply: said("421 4.3.2 mx.example.test Shutting down"),
        remote: remote(),
    };
    assert_eq!(first, vec![shutting.clone(), shutting.clone(), shutting]);
    let second = store
        .deliver(&delivery(&s, b"x\n"), &specs(&["a@example.test"]))
        .unwrap();
    assert!(
        matches!(&second[0], Outcome::Delivered { .. }),
        "{second:?}"
    );
    assert_eq!(store.connections_opened(), 2);
    drop(store);
    peer.transcript();
}

#[test]
fn a_cut_after_the_final_dot_is_uncertain_only_for_missing_replies() {
    let peer = Peer::spawn(vec![script(&[
        &hello(),
        &[
            Expect("MAIL FROM:<>"),
            Send("250 2.1.0 OK\n"),
            Expect("RCPT TO:<a@example.test>"),
            Send("250 2.1.5 OK\n"),
            Expect("RCPT TO:<b@example.test>"),
            Send("250 2.1.5 OK\n"),
            Expect("DATA"),
            Send("354 OK\n"),
            Data,
            Send("250 2.0.0 <a@example.test> Saved\n"),
        ],
    ])]);
    let mut store = store(&peer);
    let null = ReversePath::Null;
    let got = store
        .deliver(
            &delivery(&null, b"bounce\r\n"),
            &specs(&["a@example.test", "b@example.test"]),
        )
        .unwrap();
    assert!(matches!(&got[0], Outcome::Delivered { .. }), "{got:?}");
    match &got[1] {
        Outcome::Uncertain { reply, remote: r } => {
            assert!(
                reply.to_string().contains("closed the connection"),
                "{reply}"
            );
            assert!(reply.to_string().contains("may have delivered"), "{reply}");
            assert_eq!(r, &remote());
        }
        other => panic!("not uncertain: {other:?}"),
    }
    peer.transcript();
}

#[test]
fn a_stalled_final_reply_times_out_as_uncertain() {
    let peer = Peer::spawn(vec![script(&[
        &hello(),
        &[
            Expect("MAIL FROM:<s@remote.test>"),
            Send("250 2.1.0 OK\n"),
            Expect("RCPT TO:<a@example.test>"),
            Send("250 2.1.5 OK\n"),
            Expect("DATA"),
            Send("354 OK\n"),
            Data,
            Sleep(Duration::from_millis(800)),
            AwaitClose,
        ],
    ])]);
    let mut store = store(&peer);
    let s = sender();
    let started = std::time::Instant::now();
    let got = store
        .deliver(&delivery(&s, b"x"), &specs(&["a@example.test"]))
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(800));
    match &got[0] {
        Outcome::Uncertain { reply, .. } => {
            assert!(reply.to_string().contains("no answer within"), "{reply}")
        }
        other => panic!("not uncertain: {other:?}"),
    }
    // The client gave the connection up rather than reading a late reply as the next one's.
    assert_eq!(
        peer.transcript().last().map(String::as_str),
        Some("(client closed)")
    );
}

#[test]
fn a_stalled_greeting_or_a_refusing_one_makes_the_store_unavailable() {
    let peer = Peer::spawn(vec![
        // Longer than the client's 500 ms, short enough that its second try is served.
        vec![Sleep(Duration::from_millis(700))],
        vec![Send("554 5.3.2 mx.example.test not accepting mail\n")],
    ]);
    let target = LmtpTarget::Tcp {
        host: "127.0.0.1".into(),
        port: peer.port,
    };
    for expected in [
        "timed out waiting for the greeting (500ms, --reply-timeout)",
        "greeted with `554 5.3.2 mx.example.test not accepting mail`",
    ] {
        match LmtpStore::connect(target.clone(), options()) {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains(expected), "{m}");
                assert!(
                    m.contains(&format!("lmtp://127.0.0.1:{}", peer.port)),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    peer.transcript();
}

#[test]
fn nobody_listening_names_what_was_tried() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let target = LmtpTarget::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    match LmtpStore::connect(target, options()) {
        Err(StoreError::Unavailable(m)) => {
            assert!(
                m.contains(&format!("cannot connect to 127.0.0.1:{port}")),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    let missing = LmtpTarget::Unix("/nonexistent/lmtp".into());
    match LmtpStore::connect(missing, options()) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("/nonexistent/lmtp"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_connection_is_reused_with_rset_and_renewed_when_the_server_left() {
    let one_message = |rcpt: &'static str| {
        vec![
            Expect("MAIL FROM:<s@remote.test>"),
            Send("250 2.1.0 OK\n"),
            Expect(rcpt),
            Send("250 2.1.5 OK\n"),
            Expect("DATA"),
            Send("354 OK\n"),
            Data,
            Send("250 2.0.0 Saved\n"),
        ]
    };
    let peer = Peer::spawn(vec![
        script(&[
            &hello(),
            &one_message("RCPT TO:<a@example.test>"),
            &[Expect("RSET"), Send("250 2.0.0 OK\n")],
            &one_message("RCPT TO:<b@example.test>"),
            // Dovecot's idle timeout: a 421 waiting for the next command, then EOF.
            &[
                Send("421 4.4.2 mx.example.test Disconnected for inactivity\n"),
                Expect("RSET"),
            ],
        ]),
        script(&[
            &hello(),
            &one_message("RCPT TO:<c@example.test>"),
            &[Expect("QUIT")],
        ]),
    ]);
    let mut store = store(&peer);
    let s = sender();
    for rcpt in ["a@example.test", "b@example.test", "c@example.test"] {
        let got = store
            .deliver(&delivery(&s, b"x\n"), &specs(&[rcpt]))
            .unwrap();
        assert!(
            matches!(&got[0], Outcome::Delivered { .. }),
            "{rcpt}: {got:?}"
        );
    }
    assert_eq!(store.connections_opened(), 2);
    drop(store);
    let t = peer.transcript();
    assert_eq!(
        t.iter().filter(|l| l.starts_with("LHLO")).count(),
        2,
        "{t:?}"
    );
}

#[test]
fn utf8_envelope_without_smtputf8_fails_before_mail() {
    let peer = Peer::spawn(vec![script(&[&hello(), &[Expect("QUIT")]])]);
    let mut store = store(&peer);
    let s = sender();
    let got = store
        .deliver(
            &delivery(&s, b"x\n"),
            &specs(&["j\u{f6}rg@example.test", "a@example.test"]),
        )
        .unwrap();
    for o in &got {
        match o {
            Outcome::Failed {
                reply,
                status,
                remote,
            } => {
                assert_eq!(status, "5.6.7");
                assert!(reply.to_string().contains("SMTPUTF8"), "{reply}");
                assert_eq!(remote, &None);
            }
            other => panic!("{other:?}"),
        }
    }
    drop(store);
    let t = peer.transcript();
    assert!(!t.iter().any(|l| l.starts_with("MAIL")), "{t:?}");
}

#[test]
fn hostile_addresses_never_reach_the_wire() {
    let peer = Peer::spawn(vec![script(&[
        &hello(),
        &[
            Expect("MAIL FROM:<s@remote.test>"),
            Send("250 2.1.0 OK\n"),
            Expect("RCPT TO:<ok@example.test>"),
            Send("250 2.1.5 OK\n"),
            Expect("DATA"),
            Send("354 OK\n"),
            Data,
            Send("250 2.0.0 Saved\n"),
            Expect("QUIT"),
        ],
    ])]);
    let mut store = store(&peer);
    let s = sender();
    let got = store
        .deliver(
            &delivery(&s, b"x\n"),
            &specs(&[
                "a@example.test>\r\nRSET",
                "ok@example.test",
                "x@y> NOTIFY=NEVER",
            ]),
        )
        .unwrap();
    assert!(matches!(&got[0], Outcome::Failed { status, remote: None, .. } if status == "5.1.3"));
    assert!(matches!(&got[1], Outcome::Delivered { .. }));
    assert!(matches!(&got[2], Outcome::Failed { status, remote: None, .. } if status == "5.1.3"));
    drop(store);
    peer.transcript();
}

#[test]
fn mail_refused_settles_everyone_and_keeps_the_connection() {
    let peer = Peer::spawn(vec![script(&[
        &hello_lockstep(),
        &[
            Expect("MAIL FROM:<s@remote.test>"),
            Send("451 4.3.0 Temporary failure\n"),
            Expect("RSET"),
            Send("250 OK\n"),
            Expect("RSET"),
            Send("250 OK\n"),
            Expect("MAIL FROM:<s@remote.test>"),
            Send("250 OK\n"),
            Expect("RCPT TO:<a@example.test>"),
            Send("550 5.1.1 no\n"),
            Expect("RSET"),
            Send("250 OK\n"),
            Expect("QUIT"),
        ],
    ])]);
    let mut store = store(&peer);
    let s = sender();
    let got = store
        .deliver(
            &delivery(&s, b"x"),
            &specs(&["a@example.test", "b@example.test"]),
        )
        .unwrap();
    assert!(got.iter().all(|o| matches!(o, Outcome::Deferred { reply, .. } if reply.to_string() == "451 4.3.0 Temporary failure")), "{got:?}");
    let got = store
        .deliver(&delivery(&s, b"x"), &specs(&["a@example.test"]))
        .unwrap();
    assert!(matches!(&got[0], Outcome::Failed { status, .. } if status == "5.1.1"));
    assert_eq!(store.connections_opened(), 1);
    drop(store);
    peer.transcript();
}

/// The same conversation with a server that offers PIPELINING (RFC 2920): the envelope
/// and DATA go before any reply (the peer reads all four lines before answering, which a
/// client waiting for each reply would never get to), the RSET of a reused connection
/// goes ahead of the next envelope, and the replies are matched in order.
#[test]
fn pipelined_envelopes_match_their_replies_in_order() {
    let peer = Peer::spawn(vec![script(&[
        &hello(),
        &[
            Expect("MAIL FROM:<s@remote.test>"),
            Expect("RCPT TO:<a@example.test>"),
            Expect("RCPT TO:<b@example.test>"),
            Expect("DATA"),
            Send(
                "451 4.3.0 Temporary failure\n503 5.5.1 MAIL needed first\n\
                 503 5.5.1 MAIL needed first\n503 5.5.1 No valid recipients\n",
            ),
            Expect("RSET"),
            Send("250 OK\n"),
            Expect("RSET"),
            Expect("MAIL FROM:<s@remote.test>"),
            Expect("RCPT TO:<a@example.test>"),
            Expect("RCPT TO:<b@example.test>"),
            Expect("DATA"),
            Send("250 OK\n250 OK\n550 5.1.1 no\n250 2.1.5 OK\n354 go\n"),
            Data,
            Send("250 2.0.0 <b@example.test> Saved\n"),
            Expect("QUIT"),
        ],
    ])]);
    let mut store = store(&peer);
    let s = sender();
    let both = specs(&["a@example.test", "b@example.test"]);
    let got = store.deliver(&delivery(&s, b"x"), &both).unwrap();
    assert!(got.iter().all(|o| matches!(o, Outcome::Deferred { reply, .. } if reply.to_string() == "451 4.3.0 Temporary failure")), "{got:?}");
    let got = store.deliver(&delivery(&s, b"x"), &both).unwrap();
    assert!(
        matches!(&got[0], Outcome::Failed { status, .. } if status == "5.1.1"),
        "{got:?}"
    );
    assert!(matches!(&got[1], Outcome::Delivered { .. }), "{got:?}");
    assert_eq!(store.connections_opened(), 1);
    drop(store);
    let transcript = peer.transcript();
    assert!(transcript.contains(&"DATA:x".to_string()), "{transcript:?}");
}

/// A kept connection the server closed while idle: its RSET, sent ahead of the next
/// envelope, is not answered, and the message goes on a new connection (without an RSET)
/// instead of being deferred.
#[test]
fn a_kept_connection_closed_while_idle_is_replaced_without_a_deferral() {
    let first = script(&[
        &hello(),
        &[
            Expect("MAIL FROM:<s@remote.test>"),
            Expect("RCPT TO:<a@example.test>"),
            Expect("DATA"),
            Send("250 OK\n250 OK\n354 go\n"),
            Data,
            Send("250 2.0.0 Saved\n"),
            // The script ends: the peer closes this connection.
        ],
    ]);
    let second = script(&[
        &hello(),
        &[
            Expect("MAIL FROM:<s@remote.test>"),
            Expect("RCPT TO:<a@example.test>"),
            Expect("DATA"),
            Send("250 OK\n250 OK\n354 go\n"),
            Data,
            Send("250 2.0.0 Saved\n"),
            Expect("QUIT"),
        ],
    ]);
    let peer = Peer::spawn(vec![first, second]);
    let mut store = store(&peer);
    let s = sender();
    let one = specs(&["a@example.test"]);
    for n in 1..=2 {
        // Let the peer close the first connection before the second message.
        std::thread::sleep(Duration::from_millis(100));
        let got = store.deliver(&delivery(&s, b"x"), &one).unwrap();
        assert!(
            matches!(&got[0], Outcome::Delivered { .. }),
            "message {n}: {got:?}"
        );
    }
    assert_eq!(store.connections_opened(), 2);
    drop(store);
    peer.transcript();
}

/// MAIL, RCPT for a@ and b@, DATA and the body, all accepted.
fn two_up_to_the_dot() -> Vec<crate::deliver::testpeer::Step> {
    vec![
        Expect("MAIL FROM:<s@remote.test>"),
        Send("250 2.1.0 Ok\n"),
        Expect("RCPT TO:<a@example.test>"),
        Send("250 2.1.5 Ok\n"),
        Expect("RCPT TO:<b@example.test>"),
        Send("250 2.1.5 Ok\n"),
        Expect("DATA"),
        Send("354 go\n"),
        Data,
    ]
}

#[test]
fn cyrus_multi_line_replies_give_the_enhanced_code_of_their_last_line() {
    let peer = Peer::spawn(vec![script(&[
        &hello(),
        &two_up_to_the_dot(),
        &[
            // Cyrus lmtpd: the enhanced code on the last line only.
            Send(
                "550-Mailbox unknown.  Either there is no mailbox associated with this\n\
                 550-name or you do not have authorization to see it.\n\
                 550 5.1.1 User unknown\n",
            ),
            SendRaw(b"550 5.1.1 <b@example.test> \x9b unknown\r\n"),
            Expect("QUIT"),
        ],
    ])]);
    let mut store = store(&peer);
    let s = sender();
    let got = store
        .deliver(
            &delivery(&s, b"x\n"),
            &specs(&["a@example.test", "b@example.test"]),
        )
        .unwrap();
    match &got[..] {
        [
            Outcome::Failed {
                status: a, reply, ..
            },
            Outcome::Failed { status: b, .. },
        ] => {
            assert_eq!((a.as_str(), b.as_str()), ("5.1.1", "5.1.1"));
            assert!(reply.to_string().ends_with("User unknown"), "{reply}");
        }
        other => panic!("{other:?}"),
    }
    drop(store);
    peer.transcript();
}

#[test]
fn final_replies_are_each_one_deadline_and_bounded_in_bytes() {
    let gap = Duration::from_millis(100);
    let peer = Peer::spawn(vec![
        // The first recipient's reply is prompt, the second's dripped (14 bytes, 1.4 s,
        // against a 500 ms reply timeout).
        script(&[
            &hello(),
            &two_up_to_the_dot(),
            &[
                Send("250 2.0.0 <a@example.test> Saved\n"),
                Drip("250 2.0.0 ok\n", gap),
            ],
        ]),
        // A line that never ends.
        script(&[&hello(), &two_up_to_the_dot(), &[Endless]]),
    ]);
    let mut store = store(&peer);
    let s = sender();
    let both = specs(&["a@example.test", "b@example.test"]);
    let got = store.deliver(&delivery(&s, b"x\n"), &both).unwrap();
    assert!(matches!(&got[0], Outcome::Delivered { .. }), "{got:?}");
    assert!(
        matches!(&got[1], Outcome::Uncertain { reply, .. } if reply.to_string().contains("no answer within 500ms")),
        "{got:?}"
    );
    let got = store.deliver(&delivery(&s, b"x\n"), &both).unwrap();
    for o in &got {
        assert!(
            matches!(o, Outcome::Uncertain { reply, .. } if reply.to_string().contains("reply too long")),
            "{got:?}"
        );
    }
    assert_eq!(store.connections_opened(), 2);
    drop(store);
    peer.transcript();
}

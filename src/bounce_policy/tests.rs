//! Unit tests of the bounce policy: RFC 8601 parsing, trust, spam verdicts, decisions.

use super::*;

const ID: &str = "mx1.example.net";

fn policy(require: Require, spam: Spam) -> BouncePolicy {
    BouncePolicy {
        authserv_id: Some(ID.into()),
        require,
        spam,
    }
}

/// A message whose header is `above`, then our MX's Received:, then `below`.
fn message(above: &str, below: &str) -> Vec<u8> {
    format!(
        "{above}Received: from mail.sender.example (mail.sender.example [192.0.2.7])\r\n\
         \tby mx1.example.net (Postfix) with ESMTPS id 4QxYz1; Tue, 24 Jan 2023 10:00:00 +0100\r\n\
         {below}From: a@sender.example\r\nSubject: hi\r\n\r\nbody\r\n"
    )
    .into_bytes()
}

#[track_caller]
fn check(policy: &BouncePolicy, sender_domain: &str, msg: &[u8], expected: &str) {
    let ev = evidence(msg, policy.authserv_id.as_deref());
    let verdict = decide(policy, sender_domain, &ev);
    assert_eq!(verdict.label(), expected, "{verdict:?} for {ev:?}");
}

#[test]
fn parses_a_real_opendmarc_field() {
    let ar = parse_auth_results(
        "mx1.example.net; dkim=pass (2048-bit key; unprotected)\r\n header.d=sender.example \
         header.i=@sender.example header.b=\"AbC+/1\"; spf=pass (mx1.example.net: domain of \
         a@sender.example designates 192.0.2.7 as permitted sender) smtp.mailfrom=a@sender.example; \
         dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=sender.example",
    )
    .unwrap();
    assert_eq!(ar.authserv_id, "mx1.example.net");
    let methods: Vec<(&str, &str)> = ar
        .results
        .iter()
        .map(|r| (r.method.as_str(), r.result.as_str()))
        .collect();
    assert_eq!(
        methods,
        [("dkim", "pass"), ("spf", "pass"), ("dmarc", "pass")]
    );
    assert_eq!(ar.results[0].prop("header.d"), Some("sender.example"));
    assert_eq!(ar.results[0].prop("header.b"), Some("AbC+/1"));
    assert_eq!(
        ar.results[1].prop("smtp.mailfrom"),
        Some("a@sender.example")
    );
    assert_eq!(ar.results[2].prop("header.from"), Some("sender.example"));
}

#[test]
fn parses_versions_spaces_around_equals_and_none() {
    let ar = parse_auth_results("mx1.example.net 1; SPF = SoftFail smtp.mailfrom = x@y.example")
        .unwrap();
    assert_eq!(ar.authserv_id, "mx1.example.net");
    assert_eq!(ar.results.len(), 1);
    assert_eq!(ar.results[0].method, "spf");
    assert_eq!(ar.results[0].result, "softfail");
    assert_eq!(ar.results[0].prop("smtp.mailfrom"), Some("x@y.example"));
    let none = parse_auth_results("mx1.example.net; none").unwrap();
    assert!(none.results.is_empty());
    assert!(parse_auth_results("  ").is_none());
    // A comment hiding a fake result is not a result.
    let ar = parse_auth_results(
        "mx1.example.net; spf=fail (spf=pass; dkim=pass) smtp.mailfrom=a@b.example",
    )
    .unwrap();
    assert_eq!(ar.results.len(), 1);
    assert_eq!(ar.results[0].result, "fail");
}

#[test]
fn spam_verdicts_of_spamassassin_and_rspamd() {
    assert_eq!(
        spam_verdict("X-Spam-Flag", " YES").as_deref(),
        Some("X-Spam-Flag: YES")
    );
    assert_eq!(spam_verdict("X-Spam-Flag", "NO"), None);
    assert_eq!(
        spam_verdict(
            "X-Spam-Status",
            "Yes, score=14.2 required=5.0 tests=BAYES_99,URIBL_BLACK autolearn=spam version=3.4.6"
        )
        .as_deref(),
        Some("X-Spam-Status: Yes, score=14.2")
    );
    assert_eq!(
        spam_verdict("X-Spam-Status", "No, score=-0.1 required=5.0"),
        None
    );
    assert_eq!(
        spam_verdict(
            "X-Spamd-Result",
            "default: True [16.40 / 15.00]; BAYES_SPAM(5.10)[99.99%]; R_SPF_FAIL(1.00)[-all]"
        )
        .as_deref(),
        Some("X-Spamd-Result: default: True [16.40 / 15.00]")
    );
    assert_eq!(
        spam_verdict(
            "X-Spamd-Result",
            "default: False [1.20 / 15.00]; R_SPF_ALLOW(-0.20)"
        ),
        None
    );
}

#[test]
fn any_bounces_everything_but_spam_when_suppressed() {
    let spam = message("X-Spam-Flag: YES\r\n", "");
    check(
        &policy(Require::Any, Spam::Bounce),
        "sender.example",
        &spam,
        "bounce",
    );
    check(
        &policy(Require::Any, Spam::Suppress),
        "sender.example",
        &spam,
        "spam",
    );
    // A spam verdict below our Received: came from elsewhere: not ours.
    let relayed = message("", "X-Spam-Flag: YES\r\n");
    check(
        &policy(Require::Any, Spam::Suppress),
        "sender.example",
        &relayed,
        "bounce",
    );
    check(&BouncePolicy::default(), "sender.example", &spam, "bounce");
    assert!(!BouncePolicy::default().is_active());
}

#[test]
fn spf_or_dkim_pass() {
    let p = policy(Require::SpfOrDkimPass, Spam::Bounce);
    let field = |r: &str| format!("Authentication-Results: mx1.example.net; {r}\r\n");
    for (result, expected) in [
        ("spf=pass smtp.mailfrom=a@sender.example", "bounce"),
        ("spf=fail smtp.mailfrom=a@sender.example", "unauthenticated"),
        (
            "spf=softfail smtp.mailfrom=a@sender.example",
            "unauthenticated",
        ),
        ("dkim=pass header.d=other.example", "bounce"),
        ("dkim=fail header.d=sender.example", "unauthenticated"),
        ("dmarc=pass header.from=sender.example", "unauthenticated"),
    ] {
        check(&p, "sender.example", &message(&field(result), ""), expected);
    }
}

#[test]
fn dmarc_or_aligned_pass() {
    let p = policy(Require::DmarcOrAlignedPass, Spam::Bounce);
    let field = |r: &str| format!("Authentication-Results: mx1.example.net; {r}\r\n");
    for (result, expected) in [
        ("dmarc=pass header.from=sender.example", "bounce"),
        ("dmarc=fail header.from=sender.example", "unauthenticated"),
        (
            "spf=pass smtp.mailfrom=bounces@mail.sender.example",
            "bounce",
        ),
        (
            "spf=pass smtp.mailfrom=a@elsewhere.example",
            "unauthenticated",
        ),
        ("dkim=pass header.d=sender.example", "bounce"),
        ("dkim=pass header.d=esp.example", "unauthenticated"),
        ("dkim=pass header.i=@news.sender.example", "bounce"),
        (
            "spf=softfail smtp.mailfrom=a@sender.example",
            "unauthenticated",
        ),
    ] {
        check(&p, "sender.example", &message(&field(result), ""), expected);
    }
}

#[test]
fn only_our_fields_above_our_received_count() {
    let p = policy(Require::SpfOrDkimPass, Spam::Bounce);
    let pass = "spf=pass smtp.mailfrom=a@sender.example";
    // Another authserv-id, above: not ours.
    let other = message(
        &format!("Authentication-Results: mx.attacker.example; {pass}\r\n"),
        "",
    );
    check(&p, "sender.example", &other, "unauthenticated");
    // Ours, but below our Received: written by the sender.
    let forged = message(
        "",
        &format!("Authentication-Results: mx1.example.net; {pass}\r\n"),
    );
    check(&p, "sender.example", &forged, "unauthenticated");
    let ev = evidence(&forged, Some(ID));
    assert_eq!(ev.below_received, 1);
    let verdict = decide(&p, "sender.example", &ev);
    assert!(verdict.reason().contains("below our Received"), "{verdict}");
    // The authserv-id is compared without case.
    let ours = message(
        &format!("Authentication-Results: MX1.Example.NET; {pass}\r\n"),
        "",
    );
    check(&p, "sender.example", &ours, "bounce");
    // Without any Received:, nothing can be told from what the author wrote.
    let bare = format!(
        "Authentication-Results: mx1.example.net; {pass}\r\nX-Spam-Flag: YES\r\n\r\nbody\r\n"
    );
    check(&p, "sender.example", bare.as_bytes(), "unauthenticated");
    let spam = policy(Require::Any, Spam::Suppress);
    check(&spam, "sender.example", bare.as_bytes(), "bounce");
    // A folded field is one field.
    let folded = message(
        "Authentication-Results: mx1.example.net;\r\n\tspf=pass\r\n smtp.mailfrom=a@sender.example\r\n",
        "",
    );
    check(&p, "sender.example", &folded, "bounce");
}

#[test]
fn spam_wins_over_authentication() {
    let p = policy(Require::DmarcOrAlignedPass, Spam::Suppress);
    let msg = message(
        "X-Spamd-Result: default: True [16.40 / 15.00]\r\n\
         Authentication-Results: mx1.example.net; dmarc=pass header.from=sender.example\r\n",
        "",
    );
    let ev = evidence(&msg, Some(ID));
    let verdict = decide(&p, "sender.example", &ev);
    assert_eq!(verdict.label(), "spam");
    assert!(
        verdict
            .reason()
            .contains("X-Spamd-Result: default: True [16.40 / 15.00]")
    );
}

#[test]
fn organizational_domains() {
    assert_eq!(
        organizational_domain("Mail.Sender.Example."),
        "sender.example"
    );
    assert_eq!(organizational_domain("a.b.example.co.uk"), "example.co.uk");
    assert_eq!(organizational_domain("example.com.au"), "example.com.au");
    assert_eq!(organizational_domain("example.de"), "example.de");
    assert_eq!(organizational_domain("localhost"), "localhost");
}

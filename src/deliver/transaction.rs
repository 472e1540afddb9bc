//! One mail transaction over SMTP or LMTP, on our own client (`wire::Conn`): `MAIL FROM`,
//! one `RCPT TO` per recipient (a refused recipient gets its own outcome, the others
//! still get the message), `DATA`, the body, then the final replies: one per accepted
//! recipient in RCPT order for LMTP (RFC 2033 4.2), one for the whole message for SMTP
//! (RFC 5321 3.3).
//!
//! What each failure means for the recipients of the current message:
//! - before the final dot (MAIL, RCPT, DATA, the body): nothing was delivered, so the
//!   recipients not yet settled are `Deferred`;
//! - after the final dot, a missing reply (closed, timed out, too long, malformed):
//!   `Uncertain` for that recipient and every later one; recipients whose reply arrived
//!   keep it;
//! - a 421 at any step: the server is closing; the connection is dropped and the next
//!   message opens another.

use super::reply::Reply;
use super::wire::{self, Capabilities, Conn, WireError};
use super::{Answer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::sanitize;

/// Which protocol the session speaks: it decides how many replies follow the final dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Smtp,
    Lmtp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "SMTP",
            Protocol::Lmtp => "LMTP",
        }
    }
}

/// One open, greeted connection.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) conn: Conn,
    /// From the greeting (Dovecot: `mx.example.test`), else the target's host.
    pub(crate) server: String,
    pub(crate) caps: Capabilities,
    /// A transaction ran on it: `RSET` before the next.
    pub(crate) used: bool,
}

/// The connection a store keeps between messages, and how many it opened: what the SMTP
/// and LMTP clients share about reusing one.
#[derive(Debug, Default)]
pub(crate) struct Link {
    pub(crate) session: Option<Session>,
    pub(crate) opened: u64,
}

impl Link {
    /// The open session, if it can take a transaction: unused, or answering `RSET`.
    /// A connection that does not (closed, 421, confused) is dropped; nothing was in flight.
    pub(crate) fn reusable(&mut self) -> Option<Session> {
        let mut s = self.session.take()?;
        // A pipelining server gets its RSET in the same write as the next envelope (see
        // `Transaction::pipelined`): no round trip of its own.
        if !s.used || s.caps.pipelining {
            return Some(s);
        }
        match s.conn.command("RSET") {
            Ok(r) if r.code == 250 => Some(s),
            _ => {
                s.conn.abandon();
                None
            }
        }
    }

    /// Says QUIT, if a connection is open.
    pub(crate) fn close(&mut self) {
        if let Some(mut s) = self.session.take() {
            let _ = s.conn.command("QUIT");
            s.conn.abandon();
        }
    }
}

/// A store client that keeps a `Link` (SMTP, LMTP): `deliver_over` is its `deliver`.
pub(crate) trait Client {
    const PROTOCOL: Protocol;
    fn link(&mut self) -> &mut Link;
    /// Opens and greets a new connection.
    fn open(&mut self) -> Result<Session, StoreError>;
}

/// The trait impls every `Client` store has alike: `Deliverer` (`describe` is the target,
/// `deliver` is `deliver_over`), `Client` (over its `link` field and its own `open`),
/// `connections_opened`, `close` and `Drop` (QUIT on the way out). One definition, so SMTP and LMTP cannot drift.
macro_rules! client_store {
    ($store:ident, $protocol:expr) => {
        impl $store {
            /// How many connections were opened so far (reuse shows as 1 for many messages).
            pub fn connections_opened(&self) -> u64 {
                self.link.opened
            }

            /// Closes the connection politely (QUIT), if one is open.
            pub fn close(&mut self) {
                self.link.close();
            }
        }

        impl Drop for $store {
            fn drop(&mut self) {
                self.close();
            }
        }

        impl $crate::deliver::Deliverer for $store {
            fn describe(&self) -> String {
                self.target.to_string()
            }

            fn deliver(
                &mut self,
                delivery: &$crate::deliver::Delivery<'_>,
                recipients: &[$crate::deliver::RecipientSpec<'_>],
            ) -> Result<Vec<$crate::deliver::Outcome>, $crate::deliver::StoreError> {
                $crate::deliver::transaction::deliver_over(self, delivery, recipients)
            }
        }

        impl $crate::deliver::transaction::Client for $store {
            const PROTOCOL: $crate::deliver::transaction::Protocol = $protocol;

            fn link(&mut self) -> &mut $crate::deliver::transaction::Link {
                &mut self.link
            }

            fn open(
                &mut self,
            ) -> Result<$crate::deliver::transaction::Session, $crate::deliver::StoreError> {
                $store::open(self)
            }
        }
    };
}
pub(crate) use client_store;

/// One delivery over a client's connection: refused before connecting if the sender
/// cannot be sent, else on the reusable session (or a new one), which is kept after.
pub(crate) fn deliver_over<C: Client>(
    client: &mut C,
    delivery: &Delivery<'_>,
    recipients: &[RecipientSpec<'_>],
) -> Result<Vec<Outcome>, StoreError> {
    if let Some(refused) = refuse_sender(C::PROTOCOL, delivery, recipients) {
        return Ok(refused);
    }
    let session = match client.link().reusable() {
        Some(s) => s,
        None => client.open()?,
    };
    let (outcomes, session) = match deliver(session, C::PROTOCOL, delivery, recipients) {
        Sent::Done(outcomes, session) => (outcomes, session),
        // The kept connection did not take its RSET (closed while idle, most often):
        // nothing of this message reached the server, so it goes on a new one, as it
        // would have had the RSET gone first on its own. A new session has no RSET to
        // send, so this happens once.
        Sent::Stale => match deliver(client.open()?, C::PROTOCOL, delivery, recipients) {
            Sent::Done(outcomes, session) => (outcomes, session),
            Sent::Stale => unreachable!("a new session sends no RSET"),
        },
    };
    client.link().session = session;
    Ok(outcomes)
}

/// What [`deliver`] did with a message.
pub(crate) enum Sent {
    /// One outcome per recipient, and the session if it can carry the next message.
    Done(Vec<Outcome>, Option<Session>),
    /// The reused session refused or lost the RSET sent ahead of the envelope: nothing
    /// was delivered and the session is closed; try a new one.
    Stale,
}

/// A sender that cannot go into `MAIL FROM` refuses every recipient before a connection
/// is even needed: `Some(outcomes)`.
pub(crate) fn refuse_sender(
    protocol: Protocol,
    delivery: &Delivery<'_>,
    recipients: &[RecipientSpec<'_>],
) -> Option<Vec<Outcome>> {
    let why = wire::check_wire_address(delivery.sender.as_str()).err()?;
    let reply = format!("sender cannot be sent over {}: {why}", protocol.name());
    Some(vec![
        wire::refused_locally(reply, "5.1.7");
        recipients.len()
    ])
}

/// Delivers one message on `session` (its sender passed [`refuse_sender`]): one outcome
/// per recipient, in order, and the session back when it can carry the next message (else
/// it is closed).
pub(crate) fn deliver(
    mut session: Session,
    protocol: Protocol,
    delivery: &Delivery<'_>,
    recipients: &[RecipientSpec<'_>],
) -> Sent {
    let smtputf8 = wire::needs_smtputf8(delivery, recipients);
    if smtputf8 && !session.caps.smtputf8 {
        let reply = format!(
            "the envelope has non-ASCII addresses and the {} server {} does not offer \
             SMTPUTF8 (RFC 6531)",
            protocol.name(),
            session.server
        );
        let refused = vec![wire::refused_locally(reply, "5.6.7"); recipients.len()];
        return Sent::Done(refused, Some(session));
    }
    let mut tx = Transaction::new(&mut session, protocol, recipients.len());
    let keep = if tx.session.caps.pipelining {
        match tx.pipelined(delivery, recipients, smtputf8) {
            Some(keep) => keep,
            None => {
                session.conn.abandon();
                return Sent::Stale;
            }
        }
    } else {
        tx.run(delivery, recipients, smtputf8)
    };
    let outcomes = tx.finish();
    session.used = true;
    if keep {
        Sent::Done(outcomes, Some(session))
    } else {
        session.conn.abandon();
        Sent::Done(outcomes, None)
    }
}

/// One message's conversation; fills one outcome slot per recipient.
struct Transaction<'s> {
    session: &'s mut Session,
    protocol: Protocol,
    outcomes: Vec<Option<Outcome>>,
}

/// What to do after a step: go on, or stop and keep (or drop) the connection.
enum Flow {
    Next,
    Stop { keep: bool },
}

impl<'s> Transaction<'s> {
    fn new(session: &'s mut Session, protocol: Protocol, recipients: usize) -> Transaction<'s> {
        Transaction {
            session,
            protocol,
            outcomes: vec![None; recipients],
        }
    }

    /// Runs the transaction; true when the connection can be used again.
    fn run(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[RecipientSpec<'_>],
        smtputf8: bool,
    ) -> bool {
        if let Flow::Stop { keep } = self.mail(delivery, smtputf8) {
            return keep;
        }
        let accepted = match self.rcpts(recipients) {
            Ok(accepted) => accepted,
            Err(keep) => return keep,
        };
        if accepted.is_empty() {
            return self.reset();
        }
        if let Flow::Stop { keep } = self.data(delivery) {
            return keep;
        }
        self.final_replies(&accepted)
    }

    /// The transaction with RFC 2920 pipelining: `RSET` (on a reused session), `MAIL`,
    /// every `RCPT` and `DATA` go out in one write and their replies are read in order;
    /// then the body and the final dot in one write, and the final replies. Two round
    /// trips a message instead of four or more. The replies mean what they mean in
    /// [`Transaction::run`]; `None`: the RSET was not taken (see [`Sent::Stale`]).
    fn pipelined(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[RecipientSpec<'_>],
        smtputf8: bool,
    ) -> Option<bool> {
        let mut group = String::new();
        if self.session.used {
            group.push_str("RSET\r\n");
        }
        let params = wire::mail_params(delivery, &self.session.caps, smtputf8);
        let mail = format!(
            "MAIL FROM:{}{}",
            delivery.sender,
            wire::format_params(&params)
        );
        group.push_str(&mail);
        group.push_str("\r\n");
        let mut sent = Vec::with_capacity(recipients.len());
        for (i, spec) in recipients.iter().enumerate() {
            if self.refused_locally(i, spec) {
                continue;
            }
            let params = wire::rcpt_params(spec, &self.session.caps);
            group.push_str(&format!(
                "RCPT TO:<{}>{}\r\n",
                spec.address,
                wire::format_params(&params)
            ));
            sent.push(i);
        }
        if sent.is_empty() {
            // Every recipient was refused here: nothing goes on the wire.
            return Some(true);
        }
        group.push_str("DATA\r\n");
        if let Err(e) = self.session.conn.write_all(group.as_bytes()) {
            if self.session.used {
                return None;
            }
            self.settle_rest(|_| lost(&e, "at MAIL FROM"));
            return Some(false);
        }
        let wait = self.session.conn.timeouts().command;
        if self.session.used {
            match self.session.conn.read_reply(wait) {
                Ok(r) if r.code == 250 => {}
                _ => return None,
            }
        }
        // Until DATA's 354 nothing can be delivered: any failure leaves the rest deferred.
        let mail_refused = match self.session.conn.read_reply(wait) {
            Ok(r) if r.code == 250 => None,
            Ok(r) if r.code == 421 => {
                self.settle_rest(|server| wire::outcome_of(&r, server));
                return Some(false);
            }
            Ok(r) => Some(r),
            Err(e) => {
                self.settle_rest(|_| lost(&e, "at MAIL FROM"));
                return Some(false);
            }
        };
        let mut accepted = Vec::with_capacity(sent.len());
        for &i in &sent {
            match self.session.conn.read_reply(wait) {
                // After a refused MAIL the RCPT replies say nothing of the recipient.
                Ok(r) if r.code == 421 => {
                    self.settle_rest(|server| wire::outcome_of(&r, server));
                    return Some(false);
                }
                Ok(_) if mail_refused.is_some() => {}
                Ok(r) if r.code == 250 || r.code == 251 => accepted.push(i),
                Ok(r) if r.is_positive() => {
                    self.outcomes[i] = Some(wire::unexpected(&r, "RCPT TO", &self.session.server));
                }
                Ok(r) => self.outcomes[i] = Some(wire::outcome_of(&r, &self.session.server)),
                Err(e) => {
                    self.settle_rest(|_| lost(&e, "at RCPT TO"));
                    return Some(false);
                }
            }
        }
        let data = match self.session.conn.read_reply(wait) {
            Ok(r) => r,
            Err(e) => {
                self.settle_rest(|_| lost(&e, "at DATA"));
                return Some(false);
            }
        };
        if let Some(r) = mail_refused {
            if data.code == 354 {
                // A server that opens DATA after refusing MAIL: drop it before any byte
                // of the message, so nothing can be delivered.
                self.settle_rest(|server| wire::outcome_of(&r, server));
                return Some(false);
            }
            return Some(matches!(
                self.refuse_all(&r, "MAIL FROM"),
                Flow::Stop { keep: true }
            ));
        }
        if accepted.is_empty() {
            // DATA is refused for want of recipients (RFC 2920 3.1); a 354 all the same
            // is not answered with a message: the connection goes.
            return Some(data.code != 354 && data.code != 421 && self.reset());
        }
        match data.code {
            354 => {}
            _ => {
                return Some(matches!(
                    self.refuse_all(&data, "DATA"),
                    Flow::Stop { keep: true }
                ));
            }
        }
        if let Flow::Stop { keep } = self.send_body(delivery) {
            return Some(keep);
        }
        Some(self.final_replies(&accepted))
    }

    fn mail(&mut self, delivery: &Delivery<'_>, smtputf8: bool) -> Flow {
        let params = wire::mail_params(delivery, &self.session.caps, smtputf8);
        let line = format!(
            "MAIL FROM:{}{}",
            delivery.sender,
            wire::format_params(&params)
        );
        match self.session.conn.command(&line) {
            Ok(r) if r.code == 250 => Flow::Next,
            Ok(r) => self.refuse_all(&r, "MAIL FROM"),
            Err(e) => {
                self.settle_rest(|_| lost(&e, "at MAIL FROM"));
                Flow::Stop { keep: false }
            }
        }
    }

    /// RCPT for each recipient; `Ok(indexes accepted)`, or `Err(keep)` when the session ended.
    fn rcpts(&mut self, recipients: &[RecipientSpec<'_>]) -> Result<Vec<usize>, bool> {
        let mut accepted = Vec::new();
        for (i, spec) in recipients.iter().enumerate() {
            if self.refused_locally(i, spec) {
                continue;
            }
            let params = wire::rcpt_params(spec, &self.session.caps);
            let line = format!("RCPT TO:<{}>{}", spec.address, wire::format_params(&params));
            match self.session.conn.command(&line) {
                Ok(r) if r.code == 250 || r.code == 251 => accepted.push(i),
                Ok(r) if r.code == 421 => {
                    self.settle_rest(|server| wire::outcome_of(&r, server));
                    return Err(false);
                }
                Ok(r) if r.is_positive() => {
                    self.outcomes[i] = Some(wire::unexpected(&r, "RCPT TO", &self.session.server));
                }
                Ok(r) => self.outcomes[i] = Some(wire::outcome_of(&r, &self.session.server)),
                Err(e) => {
                    self.settle_rest(|_| lost(&e, "at RCPT TO"));
                    return Err(false);
                }
            }
        }
        Ok(accepted)
    }

    fn data(&mut self, delivery: &Delivery<'_>) -> Flow {
        match self.session.conn.command("DATA") {
            Ok(r) if r.code == 354 => {}
            Ok(r) => return self.refuse_all(&r, "DATA"),
            Err(e) => {
                self.settle_rest(|_| lost(&e, "at DATA"));
                return Flow::Stop { keep: false };
            }
        }
        self.send_body(delivery)
    }

    /// The message and its final dot, in one write (no second small write). A failed
    /// write or flush (TLS included: rustls reports a socket error at the flush, with
    /// records still unsent) leaves the last bytes unsent, and with them the dot's CRLF:
    /// the server cannot have seen the end of the data, so nothing was delivered.
    fn send_body(&mut self, delivery: &Delivery<'_>) -> Flow {
        let mut body = wire::data_body(delivery.content);
        body.extend_from_slice(wire::DATA_END);
        if let Err(e) = self.session.conn.write_all(&body) {
            self.settle_rest(|_| lost(&e, "while sending the message"));
            return Flow::Stop { keep: false };
        }
        Flow::Next
    }

    /// LMTP: one reply per accepted recipient, in RCPT order (RFC 2033 4.2); SMTP: one
    /// reply for all of them.
    fn final_replies(&mut self, accepted: &[usize]) -> bool {
        let wait = self.session.conn.timeouts().data_end;
        let mut keep = true;
        for (n, &i) in accepted.iter().enumerate() {
            if self.protocol == Protocol::Smtp && n > 0 {
                self.outcomes[i] = self.outcomes[accepted[0]].clone();
                continue;
            }
            match self.session.conn.read_reply(wait) {
                Ok(r) => {
                    keep &= r.code != 421;
                    self.outcomes[i] = Some(match r.code {
                        300..400 => wire::unexpected(&r, "the final dot", &self.session.server),
                        _ => wire::outcome_of(&r, &self.session.server),
                    });
                }
                Err(e) => {
                    self.uncertain_from(accepted, n, &e);
                    return false;
                }
            }
        }
        keep
    }

    /// A refusal of the whole transaction (MAIL or DATA): every unsettled recipient gets it.
    fn refuse_all(&mut self, reply: &Reply, step: &str) -> Flow {
        if reply.is_positive() {
            self.settle_rest(|server| wire::unexpected(reply, step, server));
        } else {
            self.settle_rest(|server| wire::outcome_of(reply, server));
        }
        if reply.code == 421 {
            Flow::Stop { keep: false }
        } else {
            Flow::Stop { keep: self.reset() }
        }
    }

    /// RSET after an aborted transaction; true when the server took it.
    fn reset(&mut self) -> bool {
        matches!(self.session.conn.command("RSET"), Ok(r) if r.code == 250)
    }

    /// Refuses recipient `i` before a byte is sent when its address could break out of the
    /// command line (`wire::check_wire_address`); both conversations, pipelined or not.
    fn refused_locally(&mut self, i: usize, spec: &RecipientSpec<'_>) -> bool {
        let Err(why) = wire::check_wire_address(spec.address) else {
            return false;
        };
        let reply = format!(
            "recipient `{}` cannot be sent over {}: {why}",
            sanitize::for_terminal(spec.address),
            self.protocol.name()
        );
        self.outcomes[i] = Some(wire::refused_locally(reply, "5.1.3"));
        true
    }

    fn settle_rest(&mut self, outcome: impl Fn(&str) -> Outcome) {
        for slot in self.outcomes.iter_mut().filter(|o| o.is_none()) {
            *slot = Some(outcome(&self.session.server));
        }
    }

    /// The final dot went out, the replies from `accepted[from]` on did not come back.
    fn uncertain_from(&mut self, accepted: &[usize], from: usize, e: &WireError) {
        for &i in &accepted[from..] {
            self.outcomes[i] = Some(Outcome::Uncertain {
                reply: Answer::Local(format!(
                    "no reply after the final dot ({e}): the server may have delivered it"
                )),
                remote: Some(self.session.server.clone()),
            });
        }
    }

    fn finish(self) -> Vec<Outcome> {
        let server = self.session.server.clone();
        self.outcomes
            .into_iter()
            .map(|o| {
                // Every path settles every slot; should one be missed, retrying is safe
                // because no final dot was sent for it.
                o.unwrap_or_else(|| Outcome::Deferred {
                    reply: Answer::Local("internal error: no outcome recorded".to_string()),
                    remote: Some(server.clone()),
                })
            })
            .collect()
    }
}

/// The connection broke before the final dot: nothing was delivered, try again later.
fn lost(e: &WireError, step: &str) -> Outcome {
    Outcome::Deferred {
        reply: Answer::Local(format!("connection lost {step}: {e}")),
        remote: None,
    }
}

//! The delivery workers: each owns one store connection and takes one message at a time
//! from the dispatcher (`dispatch.rs`), reads it from the spool, hands it to the store and
//! sends back what happened (`Done`).

use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use chrono::Local;

use super::read_verified;
use crate::deliver::{Deliverer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::ledger::MessageWork;

/// One message's trip to the store.
pub(super) struct Done {
    pub(super) work: MessageWork,
    pub(super) result: Attempt,
}

impl Done {
    /// What the store said per recipient, when it was reached.
    pub(super) fn outcomes(&self) -> Option<&[Outcome]> {
        match &self.result {
            Attempt::Store { result: Ok(o), .. } => Some(o),
            _ => None,
        }
    }
}

/// How a message's trip to the store ended.
pub(super) enum Attempt {
    /// The spool file changed or vanished since ingest.
    Unreadable(String),
    Store {
        result: Result<Vec<Outcome>, StoreError>,
        latency: Duration,
        at: String,
    },
}

/// Reads the message and hands it to `store` for its recipients.
pub(super) fn attempt(store: &mut dyn Deliverer, work: &MessageWork, recovering: bool) -> Done {
    let m = &work.message;
    let content = match read_verified(m) {
        Ok(c) => c,
        Err(why) => {
            return Done {
                work: work.clone(),
                result: Attempt::Unreadable(why),
            };
        }
    };
    let recipients: Vec<RecipientSpec<'_>> = work
        .recipients
        .iter()
        .map(|r| RecipientSpec {
            address: &r.address,
            orcpt: r.orcpt.as_deref(),
            notify: r.notify,
        })
        .collect();
    let delivery = Delivery {
        message_key: &m.content_hash,
        sender: &m.sender,
        content: &content,
        arrival: m.arrival,
        recovering,
        envid: m.envid.as_deref(),
        ret: m.ret,
    };
    let at = Local::now().fixed_offset().to_rfc3339();
    let started = Instant::now();
    let result = store.deliver(&delivery, &recipients);
    Done {
        work: work.clone(),
        result: Attempt::Store {
            result,
            latency: started.elapsed(),
            at,
        },
    }
}

/// A worker: one store connection, made on first use and again after a store error.
pub(super) fn worker(
    factory: &super::StoreFactory<'_>,
    jobs: &Mutex<Receiver<MessageWork>>,
    done: &mpsc::Sender<Done>,
) {
    let mut store: Option<Box<dyn Deliverer>> = None;
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(work) = job else { return };
        let result = match &mut store {
            Some(s) => attempt(s.as_mut(), &work, false),
            None => match factory() {
                Ok(s) => attempt(store.insert(s).as_mut(), &work, false),
                Err(e) => Done {
                    work,
                    result: Attempt::Store {
                        result: Err(e),
                        latency: Duration::ZERO,
                        at: String::new(),
                    },
                },
            },
        };
        if matches!(&result.result, Attempt::Store { result: Err(_), .. }) {
            store = None;
        }
        if done.send(result).is_err() {
            return;
        }
    }
}

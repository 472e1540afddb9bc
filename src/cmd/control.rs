//! `spoolreplay control`: a steering request (pause, resume, rate N/s) for the `run` on
//! this ledger, written as a row it polls every second (see `ledger/steering.rs`).

use anyhow::Result;

use crate::config::Output;
use crate::exit::Exit;
use crate::ledger::{Ledger, Steer};
use crate::report::Printer;
use crate::report::event::Event;

pub fn run(ledger_path: &std::path::Path, output: Output, steer: &Steer) -> Result<Exit> {
    let printer = Printer::new(output);
    let ledger = Ledger::open_for_steering(ledger_path)?;
    let id = ledger.request_steering(steer)?;
    let what = match steer {
        Steer::Pause => "pause".to_string(),
        Steer::Resume => "resume".to_string(),
        Steer::Rate(r) => format!("rate {r}"),
    };
    printer.event(&Event::ControlRequest { id, request: &what })?;
    printer.note(&format!(
        "asked for {what}: a run on this ledger picks it up within a second (a run started later ignores it)"
    ));
    Ok(Exit::Done)
}

//! `spoolreplay run` against a scripted SMTP peer.

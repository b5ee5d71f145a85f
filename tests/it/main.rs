//! Integration tests: the real server, real SQLite and PostgreSQL databases started by the
//! harness (`common`), and the real command line, in one test binary. The multi-process fleet
//! runs apart, in `tests/fleet.rs`.

#[macro_use]
mod common;

mod api;
mod ask;
mod cli;
mod console;
mod crediting;
mod debits;
mod hostile;
mod hostile_input;
mod inspect;
mod layout;
mod money_back;
mod notify_http;
mod operate;
mod recovery;
mod replay;
mod schedule;
mod schema;
mod stall;
mod storage;
mod verify;
mod writer;

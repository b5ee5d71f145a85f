//! The writer lock of each SQLite database file: this process's writers of one database take
//! turns on a mutex, which wakes the next one at once, instead of SQLite's busy handler, which
//! polls with sleeps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sqlite::SqliteConnection;

diesel::table! {
    /// SQLite's `pragma_database_list`, read as a table: the file of each database a connection
    /// has open (`main` is its own).
    pragma_database_list (name) {
        name -> Text,
        file -> Text,
    }
}

use pragma_database_list as list;

/// One writer lock per SQLite database file this process opens.
static SQLITE_WRITERS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> =
    LazyLock::new(Default::default);

/// The writer lock of the database `conn` is open on, found by the file SQLite names for it.
pub(super) fn sqlite_writer(conn: &mut SqliteConnection) -> Result<Arc<Mutex<()>>, DieselError> {
    // A query of diesel's own, which its statement cache keeps prepared; `sql_query` is not.
    let main: String = list::table
        .filter(list::name.eq("main"))
        .select(list::file)
        .get_result(conn)?;
    let mut writers = SQLITE_WRITERS.lock().unwrap_or_else(|e| e.into_inner());
    Ok(writers.entry(PathBuf::from(main)).or_default().clone())
}

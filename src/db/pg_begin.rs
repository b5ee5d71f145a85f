//! What a PostgreSQL write transaction sets as it begins, in the same round trip as its `BEGIN`.
//!
//! Every write waits for its flush, whatever the role, the server or a pooler that hands this
//! transaction another session says. With a synchronous standby the COMMIT also waits for it, and
//! `statement_timeout` does not cut that wait short (the server disarms it before committing): a
//! commit that takes long is answered "retry" by the committer's own deadline, and finishes when
//! the standby answers or the connection is cut.
//!
//! The crediting statements find every row by its key, so each keeps one plan for the session:
//! left to choose, PostgreSQL planned the batch's row locks (`= ANY` over the batch's orders)
//! afresh every time, about a sixth of the server's time per batch. A plan kept while the tables
//! were nearly empty (a new deployment's first batches) would read them whole until they are
//! analyzed again; with sequential scans off, it uses their keys.
//!
//! The settings are `SET LOCAL`s, which the server parses and runs without planning. Servers
//! without `plan_cache_mode` (before PostgreSQL 12) are left as they are: once this process has
//! met one (or one that could not say), every transaction sets it through a query that asks
//! first, planned each time.

use std::sync::atomic::{AtomicBool, Ordering};

use diesel::pg::PgConnection;
use diesel::result::Error as DieselError;
use diesel::sql_types::Bool;
use diesel::{QueryableByName, RunQueryDsl};

/// Whether a server this process connected to lacks `plan_cache_mode`, or could not say. Set by
/// [`note_server`] before such a connection runs a transaction, and never unset: one `BEGIN` for
/// all connections, right on every server.
static PLAN_CACHE_MODE_MISSING: AtomicBool = AtomicBool::new(false);

const BEGIN: &str = "BEGIN; SET LOCAL synchronous_commit = on; SET LOCAL enable_seqscan = off; \
                     SET LOCAL plan_cache_mode = force_generic_plan";

const BEGIN_ASKING: &str = "BEGIN; SET LOCAL synchronous_commit = on; \
                            SET LOCAL enable_seqscan = off; \
                            SELECT set_config('plan_cache_mode', 'force_generic_plan', true) \
                            WHERE current_setting('plan_cache_mode', true) IS NOT NULL";

/// The `BEGIN` of a write transaction, with its settings.
pub(super) fn begin_sql() -> &'static str {
    if PLAN_CACHE_MODE_MISSING.load(Ordering::Relaxed) {
        BEGIN_ASKING
    } else {
        BEGIN
    }
}

/// Asks a new connection's server whether it has `plan_cache_mode`; called before the connection
/// is used. A server that cannot say is taken to lack it: the question costs a connection
/// nothing but a query.
pub(super) fn note_server(pg: &mut PgConnection) {
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Bool)]
        present: bool,
    }
    let asked: Result<Setting, DieselError> =
        diesel::sql_query("SELECT current_setting('plan_cache_mode', true) IS NOT NULL AS present")
            .get_result(pg);
    match asked {
        Ok(Setting { present: true }) => {}
        Ok(Setting { present: false }) => PLAN_CACHE_MODE_MISSING.store(true, Ordering::Relaxed),
        Err(e) => {
            log::warn!(
                "could not ask the server for plan_cache_mode ({e}); write transactions ask it each time"
            );
            PLAN_CACHE_MODE_MISSING.store(true, Ordering::Relaxed);
        }
    }
}

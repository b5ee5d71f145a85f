//! Writes that a failover will find: after a COMMIT on PostgreSQL with synchronous standbys,
//! confirmation that one of them has it (see [`confirm_replicated`]).

use std::time::Duration;

use diesel::pg::PgConnection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// The start of the error a write transaction ends with when its COMMIT returned but no
/// synchronous standby confirms it: see [`confirm_replicated`].
const UNREPLICATED: &str = "committed on the primary, not confirmed by a synchronous standby";

/// The write was committed on the primary, and its replication to a synchronous standby is not
/// confirmed: it must not be acked (see [`confirm_replicated`]).
pub fn is_unreplicated(error: &DieselError) -> bool {
    matches!(error, DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
        if info.message().starts_with(UNREPLICATED))
}

/// How long a commit's replication is looked for after its COMMIT returned.
const CONFIRM_FOR: Duration = Duration::from_secs(1);

/// How often whether the server has synchronous standbys is looked up again.
const STANDBYS_LOOKED_UP_EVERY: Duration = Duration::from_secs(1);

/// After a COMMIT on PostgreSQL: when the server waits for synchronous standbys, confirms that
/// one has flushed everything this server has flushed, this commit included.
///
/// A COMMIT waits for its synchronous standby; but when that wait is cancelled (an operator's
/// `pg_cancel_backend` on a session stuck waiting for a standby that is down), PostgreSQL still
/// reports the COMMIT as done, with only a WARNING ("already committed locally, but might not have
/// been replicated"). libpq hands warnings to a notice processor, which diesel keeps to itself and
/// discards. So instead of listening for the warning, payhook asks `pg_stat_replication` whether a
/// synchronous standby has flushed past the primary's flush position; if none has within
/// [`CONFIRM_FOR`], the transaction fails with [`is_unreplicated`] and what it wrote is answered
/// "retry": a failover now could lose it. The provider's next delivery finds it done and, once a
/// standby confirms it, is acked as a duplicate.
///
/// Servers without synchronous standbys, and roles that may not read the positions
/// (`pg_read_all_stats`, which `pg_monitor` includes), are not asked; whether the server has
/// synchronous standbys is looked up once a second per process.
pub(super) fn confirm_replicated(pg: &mut PgConnection) -> Result<(), DieselError> {
    use diesel::sql_types::{Bool, Text};
    use diesel::{QueryableByName, RunQueryDsl};
    use std::sync::Mutex;
    use std::time::Instant;

    static STANDBYS: Mutex<Option<(Instant, bool)>> = Mutex::new(None);
    #[derive(QueryableByName)]
    struct Standbys {
        #[diesel(sql_type = Bool)]
        synchronous: bool,
        #[diesel(sql_type = Bool)]
        may_read: bool,
    }
    #[derive(QueryableByName)]
    struct Flushed {
        #[diesel(sql_type = Text)]
        lsn: String,
        #[diesel(sql_type = Bool)]
        replicated: bool,
    }

    let known = *STANDBYS.lock().unwrap_or_else(|e| e.into_inner());
    let synchronous = match known {
        Some((at, synchronous)) if at.elapsed() < STANDBYS_LOOKED_UP_EVERY => synchronous,
        _ => {
            // Written to run on servers that speak PostgreSQL's protocol without its settings
            // or roles: a lookup that fails means "cannot check", never a failed write.
            let looked_up: Result<Standbys, DieselError> = diesel::sql_query(
                "SELECT COALESCE(current_setting('synchronous_standby_names', true), '') <> '' \
                     AS synchronous, \
                 CASE WHEN to_regrole('pg_read_all_stats') IS NULL THEN false \
                     ELSE pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') END \
                     AS may_read",
            )
            .get_result(pg);
            let synchronous = match looked_up {
                Ok(Standbys {
                    synchronous: true,
                    may_read: false,
                }) => {
                    warn_once(
                        "the server has synchronous standbys, but payhook's role may not read \
                         their positions (GRANT pg_monitor TO the role): a COMMIT whose wait for \
                         a standby is cancelled cannot be told from one that was replicated",
                    );
                    false
                }
                Ok(standbys) => standbys.synchronous,
                Err(e) => {
                    warn_once(&format!(
                        "cannot tell whether the server has synchronous standbys ({e}); writes \
                         are not checked against them"
                    ));
                    false
                }
            };
            *STANDBYS.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((Instant::now(), synchronous));
            synchronous
        }
    };
    if !synchronous {
        return Ok(());
    }
    // The primary's flush position is past this commit (a COMMIT flushes before it waits for a
    // standby; one that did not wait for the flush wrote only a delivery count, and what it
    // counts was flushed before), and is at most a few other commits ahead of it. Any error from
    // here on leaves the commit done but unconfirmed: never one that a caller would run again.
    let unconfirmed = |why: String| {
        DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(format!("{UNREPLICATED}: {why}")),
        )
    };
    let flushed: Flushed = diesel::sql_query(
        "SELECT pg_current_wal_flush_lsn()::text AS lsn, EXISTS (SELECT 1 FROM \
         pg_stat_replication WHERE sync_state IN ('sync', 'quorum') \
         AND flush_lsn >= pg_current_wal_flush_lsn()) AS replicated",
    )
    .get_result(pg)
    .map_err(|e| unconfirmed(e.to_string()))?;
    let deadline = Instant::now() + CONFIRM_FOR;
    let mut pause = Duration::ZERO;
    let mut replicated = flushed.replicated;
    while !replicated && Instant::now() < deadline {
        std::thread::sleep(pause);
        pause = (pause * 2).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let again: Flushed = diesel::sql_query(
            "SELECT $1 AS lsn, EXISTS (SELECT 1 FROM pg_stat_replication \
             WHERE sync_state IN ('sync', 'quorum') AND flush_lsn >= $1::pg_lsn) AS replicated",
        )
        .bind::<Text, _>(&flushed.lsn)
        .get_result(pg)
        .map_err(|e| unconfirmed(e.to_string()))?;
        replicated = again.replicated;
    }
    if replicated {
        Ok(())
    } else {
        Err(unconfirmed(format!(
            "no synchronous standby has flushed WAL position {} within {CONFIRM_FOR:?}",
            flushed.lsn
        )))
    }
}

/// Logs `message` as a warning the first time only, for the life of the process.
fn warn_once(message: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| log::warn!("{message}"));
}

//! Storage: one code path over SQLite, PostgreSQL and MySQL/MariaDB, chosen at run time by the
//! URL's scheme.
//!
//! - [`DbConnection`] is diesel's multi-backend connection; everything above this module is
//!   written once against it.
//! - [`Manager`] opens connections for r2d2 itself, so a refused PostgreSQL connection reports
//!   libpq's own words rather than a generic "invalid URL".
//! - Every connection gets the same session settings in [`SessionSettings`] (SQLite pragmas;
//!   PostgreSQL timeouts and `synchronous_commit`), and every write
//!   transaction on SQLite is `BEGIN IMMEDIATE` ([`write_transaction`]): a deferred transaction
//!   that upgrades from read to write fails with "database is locked" under concurrency instead of
//!   waiting its turn.
//! - Migrations are embedded per backend and run by [`migrate`].

use std::path::PathBuf;
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::mysql::MysqlConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{self, CustomizeConnection, ManageConnection, R2D2Connection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::PoolSettings;

mod pg_begin;
mod replication;
pub mod schema;
mod session_url;
mod sqlite_writer;

use replication::confirm_replicated;
pub use replication::is_unreplicated;
use session_url::postgresql_session_url;
use sqlite_writer::sqlite_writer;

/// A connection to whichever backend the URL names.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
    Mysql(MysqlConnection),
}

pub type Pool = r2d2::Pool<Manager>;
pub type PooledConnection = r2d2::PooledConnection<Manager>;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRESQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgresql");
const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// MySQL's rules for every payhook session, whatever the server's default: strict (a value that
/// does not fit is an error, never silently cut), and `||` joins text as in standard SQL.
const MYSQL_SQL_MODE: &str = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,\
     ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,PIPES_AS_CONCAT";

/// How long a SQLite writer waits for the lock before giving up with "database is locked".
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// Where the books are, parsed from a `database_url`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgresql(String),
    Mysql(String),
}

impl std::fmt::Debug for DatabaseUrl {
    /// PostgreSQL URLs may carry a password: show only the backend.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            DatabaseUrl::Postgresql(_) => f.write_str("Postgresql(***)"),
            DatabaseUrl::Mysql(_) => f.write_str("Mysql(***)"),
        }
    }
}

impl DatabaseUrl {
    /// Accepts `sqlite://PATH`, `sqlite:PATH`, `postgres://...`, `postgresql://...`, and
    /// `mysql://...` (MySQL or MariaDB; a local socket with `?unix_socket=PATH`).
    pub fn parse(url: &str) -> Result<DatabaseUrl, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgresql(url.to_owned()));
        }
        if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            return Ok(DatabaseUrl::Mysql(url));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| {
                DbError::Url(
                    "database_url must start with sqlite://, postgres:// or mysql:// (e.g. sqlite://data/payhook.db)"
                        .to_owned(),
                )
            })?;
        if path.is_empty() {
            return Err(DbError::Url(
                "database_url sqlite:// names no file".to_owned(),
            ));
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    }

    /// How many writer threads commit in parallel when `[commit] writers` leaves it to the
    /// backend: SQLite has one writer anyway. On PostgreSQL and MySQL, one per core, between two
    /// and four, leaving a connection of the pool for the API and the probes: two writers let one
    /// batch gather while the other commits, and more than the cores only split the same load into
    /// smaller batches, each paying for its own statements and commit (`bench/RESULTS.md`).
    pub fn default_writers(&self, pool_size: u32) -> usize {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        self.default_writers_for(pool_size, cores)
    }

    fn default_writers_for(&self, pool_size: u32, cores: usize) -> usize {
        match self {
            DatabaseUrl::Sqlite(_) => 1,
            DatabaseUrl::Postgresql(_) | DatabaseUrl::Mysql(_) => cores
                .clamp(2, 4)
                .min((pool_size as usize).saturating_sub(1))
                .max(1),
        }
    }

    /// A description safe for logs: the SQLite path, or PostgreSQL's scheme, host, port and
    /// database, never its user, password or query (which may carry a password too).
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgresql(url) | DatabaseUrl::Mysql(url) => match url::Url::parse(url) {
                Ok(url) => format!(
                    "{}://{}{}{}",
                    url.scheme(),
                    url.host_str().unwrap_or_default(),
                    url.port().map(|p| format!(":{p}")).unwrap_or_default(),
                    url.path()
                ),
                // libpq also takes URLs a URL parser refuses: several hosts, a local socket.
                Err(_) => session_url::redacted_by_hand(url),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Url(String),
    #[error("cannot create the folder for the SQLite database {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    // The causes are part of the message (not `#[source]`), so that a log line shows them whole
    // and an error chain does not print them twice.
    #[error("cannot connect to the database: {}", .0.to_string().trim_end())]
    Connect(diesel::ConnectionError),
    #[error("database: {0}")]
    Query(DieselError),
    #[error("no database connection free: {0}")]
    Pool(r2d2::PoolError),
    #[error("migrations failed: {0}")]
    Migration(String),
}

impl From<DieselError> for DbError {
    fn from(e: DieselError) -> DbError {
        DbError::Query(e)
    }
}

impl From<r2d2::PoolError> for DbError {
    fn from(e: r2d2::PoolError) -> DbError {
        DbError::Pool(e)
    }
}

/// Conflicts that vanish when the whole transaction is tried again. A lock timeout is one: the
/// row's holder may be merely slow. It may also be frozen, so see [`is_lock_timeout`].
pub fn is_transient(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::UniqueViolation => true,
            DatabaseErrorKind::Unknown => {
                let message = info.message();
                message.contains("database is locked")
                    || message.contains("deadlock detected")
                    || message.contains("could not serialize")
                    || message.contains("due to lock timeout")
                    // MySQL and MariaDB: 1213, 1205, and 1020 under snapshot isolation.
                    || message.contains("Deadlock found")
                    || message.contains("Lock wait timeout exceeded")
                    || message.contains("Record has changed since last read")
            }
            _ => false,
        },
        _ => false,
    }
}

/// A statement gave up waiting for a row lock (`lock_timeout`). Unlike other conflicts it is tried
/// again only once: each attempt costs the whole timeout, and a frozen holder stays frozen.
pub fn is_lock_timeout(error: &DieselError) -> bool {
    matches!(error, DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
        if info.message().contains("due to lock timeout")
            || info.message().contains("Lock wait timeout exceeded"))
}

/// Opens connections by URL scheme for r2d2.
#[derive(Debug)]
pub struct Manager {
    url: DatabaseUrl,
    /// The PostgreSQL URL with the keepalives every payhook connection runs with.
    pg_url: Option<String>,
}

impl Manager {
    pub fn new(url: DatabaseUrl) -> Result<Manager, DbError> {
        if let DatabaseUrl::Sqlite(path) = &url {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
        }
        let pg_url = match &url {
            DatabaseUrl::Postgresql(url) => Some(postgresql_session_url(url)),
            DatabaseUrl::Sqlite(_) | DatabaseUrl::Mysql(_) => None,
        };
        Ok(Manager { url, pg_url })
    }
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConnection, r2d2::Error> {
        let conn = match (&self.url, &self.pg_url) {
            (DatabaseUrl::Postgresql(url), pg_url) => {
                PgConnection::establish(pg_url.as_deref().unwrap_or(url))
                    .map(DbConnection::Postgresql)
            }
            (DatabaseUrl::Sqlite(path), _) => {
                SqliteConnection::establish(&path.to_string_lossy()).map(DbConnection::Sqlite)
            }
            (DatabaseUrl::Mysql(url), _) => {
                MysqlConnection::establish(url).map(DbConnection::Mysql)
            }
        };
        conn.map_err(r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        conn.ping().map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

/// What every new connection is set up with.
///
/// SQLite: `busy_timeout` first, so the other pragmas wait for a lock rather than fail; WAL; and
/// `synchronous=FULL`, because a committed credit must survive power loss.
///
/// PostgreSQL, for the whole session:
///
/// - `lock_timeout`: a writer that meets a row locked by a frozen peer (a stopped process, a
///   paused VM) gives up and retries instead of queuing behind it for as long as the peer is
///   frozen;
/// - `statement_timeout`, and `idle_in_transaction_session_timeout` at the same value: a session
///   that freezes inside a transaction is ended by the server, and its locks with it;
/// - `synchronous_commit = on`: a credit is acked only after its commit is flushed, whatever the
///   role or server default says. The repeat-count path turns it off deliberately, for its own
///   transactions only ([`commit_without_waiting_for_flush`]).
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub lock_timeout_secs: u64,
    pub statement_timeout_secs: u64,
}

impl SessionSettings {
    pub fn new(settings: &PoolSettings) -> SessionSettings {
        SessionSettings {
            lock_timeout_secs: settings.lock_timeout_secs,
            statement_timeout_secs: settings.statement_timeout_secs,
        }
    }

    fn postgresql(&self) -> String {
        format!(
            "SET lock_timeout = '{}s'; SET statement_timeout = '{}s'; \
             SET idle_in_transaction_session_timeout = '{}s'; SET synchronous_commit = on;",
            self.lock_timeout_secs, self.statement_timeout_secs, self.statement_timeout_secs
        )
    }
}

impl CustomizeConnection<DbConnection, r2d2::Error> for SessionSettings {
    fn on_acquire(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        match conn {
            DbConnection::Sqlite(conn) => conn.batch_execute(&format!(
                "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};
                 PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA temp_store = MEMORY;"
            )),
            DbConnection::Postgresql(conn) => conn.batch_execute(&self.postgresql()).map(|()| {
                pg_begin::note_server(conn);
            }),
            // InnoDB's row-lock wait and the metadata-lock wait (a table locked whole, an ALTER),
            // the counterparts of `lock_timeout`; on MariaDB (which alone reads the `/*M!`
            // comment) `idle_transaction_timeout`, the counterpart of
            // `idle_in_transaction_session_timeout`, so a frozen session loses its locks; UTC, so
            // `DATETIME`s read back as written; `||` joins text, as in standard SQL.
            DbConnection::Mysql(conn) => conn.batch_execute(&format!(
                "SET SESSION innodb_lock_wait_timeout = {0}, lock_wait_timeout = {0} \
                 /*M!100300 , idle_transaction_timeout = {1} */; \
                 SET time_zone = '+00:00'; SET SESSION sql_mode = '{MYSQL_SQL_MODE}';",
                self.lock_timeout_secs, self.statement_timeout_secs
            )),
        }
        .map_err(r2d2::Error::QueryError)
    }
}

/// Builds the pool and opens one connection up front, so a wrong URL or a database that is down
/// is reported at start with the database's own message.
pub fn connect(url: &str, settings: &PoolSettings) -> Result<Pool, DbError> {
    let url = DatabaseUrl::parse(url)?;
    let manager = Manager::new(url)?;
    // Fail fast with the real error rather than r2d2's "timed out waiting for connection".
    let mut probe = manager.connect().map_err(|e| match e {
        r2d2::Error::ConnectionError(e) => DbError::Connect(e),
        r2d2::Error::QueryError(e) => DbError::Query(e),
    })?;
    let session = SessionSettings::new(settings);
    session.on_acquire(&mut probe).map_err(|e| match e {
        r2d2::Error::ConnectionError(e) => DbError::Connect(e),
        r2d2::Error::QueryError(e) => DbError::Query(e),
    })?;
    if let DbConnection::Mysql(my) = &mut probe {
        warn_unless_durable(my);
    }
    drop(probe);
    let pool = r2d2::Pool::builder()
        .max_size(settings.max_size)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(settings.connection_timeout_secs))
        .test_on_check_out(settings.test_on_checkout)
        .connection_customizer(Box::new(session))
        .error_handler(Box::new(LogErrors))
        .build_unchecked(manager);
    Ok(pool)
}

/// An ack promises that the credit survives a crash; on MySQL that is the server's setting alone,
/// so say so loudly when it does not hold.
fn warn_unless_durable(my: &mut MysqlConnection) {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Durability {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        flush: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        binlog: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        sync_binlog: i64,
    }
    let read = diesel::sql_query(
        "SELECT CAST(@@innodb_flush_log_at_trx_commit AS SIGNED) AS flush, \
         CAST(@@log_bin AS SIGNED) AS binlog, CAST(@@sync_binlog AS SIGNED) AS sync_binlog",
    )
    .get_result::<Durability>(my);
    match read {
        Ok(d) if d.flush != 1 || (d.binlog != 0 && d.sync_binlog != 1) => log::warn!(
            "MySQL is not durable (innodb_flush_log_at_trx_commit = {}, log_bin = {}, \
             sync_binlog = {}): acked credits can be lost in a crash; set \
             innodb_flush_log_at_trx_commit = 1, and sync_binlog = 1 with the binary log on",
            d.flush,
            d.binlog,
            d.sync_binlog
        ),
        Ok(_) => {}
        Err(e) => log::warn!("cannot read MySQL's durability settings: {e}"),
    }
}

/// Sends r2d2's background connection errors to the log instead of stderr.
#[derive(Debug)]
struct LogErrors;

impl r2d2::HandleError<r2d2::Error> for LogErrors {
    fn handle_error(&self, error: r2d2::Error) {
        log::warn!("database connection: {error}");
    }
}

/// Applies the embedded migrations that have not run yet; returns how many ran.
///
/// Several instances starting at once against one PostgreSQL database take turns through an
/// advisory lock, so only the first applies a migration and the others find it done.
pub fn migrate(conn: &mut DbConnection) -> Result<usize, DbError> {
    match conn {
        DbConnection::Postgresql(c) => {
            // Waiting for another instance's migration, or a long one, is no stuck statement.
            c.batch_execute(
                "SELECT set_config('payhook.statement_timeout', current_setting('statement_timeout'), false), \
                        set_config('payhook.lock_timeout', current_setting('lock_timeout'), false); \
                 SET statement_timeout = 0; SET lock_timeout = 0",
            )?;
            c.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
            let applied = run_migrations(c, POSTGRESQL_MIGRATIONS);
            let unlocked = c.batch_execute(&format!(
                "SELECT pg_advisory_unlock({MIGRATION_LOCK}); \
                 SELECT set_config('statement_timeout', current_setting('payhook.statement_timeout'), false), \
                        set_config('lock_timeout', current_setting('payhook.lock_timeout'), false)"
            ));
            let applied = applied?;
            unlocked?;
            Ok(applied)
        }
        DbConnection::Sqlite(c) => {
            // A migration that rebuilds a table (SQLite cannot change a constraint in place) runs
            // with foreign-key enforcement off, which SQLite allows only outside a transaction;
            // every key is checked once the migrations have run.
            c.batch_execute("PRAGMA foreign_keys = OFF")?;
            let applied = run_migrations(c, SQLITE_MIGRATIONS);
            let checked = sqlite_foreign_keys_hold(c);
            c.batch_execute("PRAGMA foreign_keys = ON")?;
            let applied = applied?;
            checked?;
            Ok(applied)
        }
        DbConnection::Mysql(c) => {
            // A named lock serialises instances starting together, as the advisory lock does.
            #[derive(diesel::QueryableByName)]
            struct Locked {
                #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
                locked: Option<i32>,
            }
            let locked: Locked = diesel::RunQueryDsl::get_result(
                diesel::sql_query("SELECT GET_LOCK('payhook_migrations', 600) AS locked"),
                c,
            )?;
            if locked.locked != Some(1) {
                return Err(DbError::Migration(
                    "another instance held the migration lock for 10 minutes".to_owned(),
                ));
            }
            // A migration may wait for a table others are using: no lock wait is too long
            // for it, as on PostgreSQL.
            c.batch_execute(
                "SET @payhook_lock_wait_timeout = @@SESSION.lock_wait_timeout; \
                 SET SESSION lock_wait_timeout = 31536000",
            )?;
            let applied = run_migrations(c, MYSQL_MIGRATIONS);
            let restored =
                c.batch_execute("SET SESSION lock_wait_timeout = @payhook_lock_wait_timeout");
            let unlocked = c.batch_execute("DO RELEASE_LOCK('payhook_migrations')");
            restored?;
            let applied = applied?;
            unlocked?;
            Ok(applied)
        }
    }
}

/// `PRAGMA foreign_key_check`: an error naming the first row whose key points nowhere.
fn sqlite_foreign_keys_hold(c: &mut SqliteConnection) -> Result<(), DbError> {
    #[derive(diesel::QueryableByName)]
    struct Broken {
        #[diesel(sql_type = diesel::sql_types::Text)]
        table: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        rowid: Option<i64>,
        #[diesel(sql_type = diesel::sql_types::Text)]
        parent: String,
    }
    let broken: Vec<Broken> =
        diesel::RunQueryDsl::load(diesel::sql_query("PRAGMA foreign_key_check"), c)?;
    match broken.first() {
        None => Ok(()),
        Some(b) => Err(DbError::Migration(format!(
            "{} row(s) break a foreign key after migrating, the first in {} (rowid {}) pointing \
             into {}",
            broken.len(),
            b.table,
            b.rowid.map_or("-".to_owned(), |r| r.to_string()),
            b.parent
        ))),
    }
}

fn run_migrations<B: diesel::backend::Backend>(
    conn: &mut impl MigrationHarness<B>,
    migrations: EmbeddedMigrations,
) -> Result<usize, DbError> {
    conn.run_pending_migrations(migrations)
        .map(|applied| applied.len())
        .map_err(|e| DbError::Migration(e.to_string()))
}

/// The advisory lock key that serialises migrations across instances ("payhook" in ASCII).
const MIGRATION_LOCK: i64 = 0x0070_6179_686f_6f6b;

/// Runs `f` in a write transaction: `BEGIN IMMEDIATE` on SQLite; on PostgreSQL a `BEGIN` with
/// its settings (see `pg_begin`).
/// Commits when `f` succeeds and rolls back when it fails.
///
/// Success means committed: if `f` left a transaction of its own open, the commit only closed
/// that one and nothing reached the disk, so that is a failure, rolled back.
pub fn write_transaction<T, E, F>(conn: &mut DbConnection, f: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
    E: From<DieselError>,
{
    type Manager = <DbConnection as Connection>::TransactionManager;
    // SQLite has one writer at a time. Writers of this process queue on the database's mutex,
    // which wakes the next one at once; left to SQLite's busy handler they would poll with sleeps
    // of up to 100 ms. Other processes still meet `busy_timeout`.
    let writer = match conn {
        DbConnection::Sqlite(inner) => Some(sqlite_writer(inner)?),
        DbConnection::Postgresql(_) | DbConnection::Mysql(_) => None,
    };
    let _writing = writer
        .as_ref()
        .map(|writer| writer.lock().unwrap_or_else(|e| e.into_inner()));
    match conn {
        DbConnection::Sqlite(inner) => {
            AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")?
        }
        // Every write waits for its flush, and keeps its plans: see `pg_begin`.
        DbConnection::Postgresql(inner) => {
            AnsiTransactionManager::begin_transaction_sql(inner, pg_begin::begin_sql())?
        }
        DbConnection::Mysql(inner) => {
            AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN")?
        }
    }
    match f(conn) {
        Ok(value) => {
            Manager::commit_transaction(conn)?;
            match Manager::transaction_manager_status_mut(conn).transaction_depth() {
                Ok(None) => {
                    if let DbConnection::Postgresql(pg) = conn {
                        confirm_replicated(pg)?;
                    }
                    Ok(value)
                }
                open => {
                    log::error!("a transaction was left open inside a write transaction ({open:?}); rolling back");
                    while let Ok(Some(_)) =
                        Manager::transaction_manager_status_mut(conn).transaction_depth()
                    {
                        if Manager::rollback_transaction(conn).is_err() {
                            break;
                        }
                    }
                    Err(DieselError::DatabaseError(
                        DatabaseErrorKind::Unknown,
                        Box::new("transaction still open after its commit; rolled back".to_owned()),
                    )
                    .into())
                }
            }
        }
        Err(e) => {
            if let Err(rollback) = Manager::rollback_transaction(conn) {
                log::warn!("rollback failed: {rollback}");
            }
            Err(e)
        }
    }
}

/// How often a transaction that met a transient conflict is tried again before giving up.
pub const MAX_ATTEMPTS: u32 = 8;

/// How often a transaction that met a lock timeout runs in all.
pub const LOCK_TIMEOUT_ATTEMPTS: u32 = 2;

/// An error that says whether running the whole transaction again may succeed.
pub trait Retry {
    /// A conflict about timing (see [`is_transient`]), not about the work itself.
    fn is_transient(&self) -> bool;
    /// A lock wait that timed out (see [`is_lock_timeout`]): tried again once at most.
    fn is_lock_timeout(&self) -> bool;
}

impl Retry for DieselError {
    fn is_transient(&self) -> bool {
        is_transient(self)
    }

    fn is_lock_timeout(&self) -> bool {
        is_lock_timeout(self)
    }
}

impl Retry for DbError {
    fn is_transient(&self) -> bool {
        matches!(self, DbError::Query(e) if is_transient(e))
    }

    fn is_lock_timeout(&self) -> bool {
        matches!(self, DbError::Query(e) if is_lock_timeout(e))
    }
}

/// Runs `f` in a write transaction, and runs it again from the start, a bounded number of times,
/// when it fails with a transient conflict (see [`Retry`]). Under SERIALIZABLE isolation or a
/// distributed SQL engine the loser of a race gets SQLSTATE 40001 and lands here.
pub fn transact<T, E, F>(conn: &mut DbConnection, f: F) -> Result<T, E>
where
    F: FnMut(&mut DbConnection) -> Result<T, E>,
    E: From<DieselError> + Retry + std::fmt::Display,
{
    transact_with(conn, LOCK_TIMEOUT_ATTEMPTS, f)
}

/// [`transact`], with the number of runs a lock timeout allows: 1 where a lock timeout has just
/// been met and another would only make the caller wait longer.
pub fn transact_with<T, E, F>(
    conn: &mut DbConnection,
    lock_timeout_attempts: u32,
    mut f: F,
) -> Result<T, E>
where
    F: FnMut(&mut DbConnection) -> Result<T, E>,
    E: From<DieselError> + Retry + std::fmt::Display,
{
    let mut attempt = 1;
    loop {
        match write_transaction(conn, &mut f) {
            Ok(value) => return Ok(value),
            Err(e) if e.is_lock_timeout() && attempt >= lock_timeout_attempts => return Err(e),
            Err(e) if attempt < MAX_ATTEMPTS && e.is_transient() => {
                log::debug!("transient conflict, attempt {attempt} of {MAX_ATTEMPTS}: {e}");
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Exponential backoff from 2 ms, with jitter so that racing transactions fall out of step.
pub fn backoff(attempt: u32) -> Duration {
    let base = 2u64 << attempt.min(8);
    Duration::from_millis(base + fastrand::u64(..base))
}

/// Lets the current transaction commit without waiting for its WAL flush (PostgreSQL's
/// `synchronous_commit = off`, for this transaction only). Only for writes whose loss in a crash
/// loses no money; SQLite keeps its full sync.
pub fn commit_without_waiting_for_flush(conn: &mut DbConnection) -> Result<(), DieselError> {
    match conn {
        DbConnection::Postgresql(pg) => pg.batch_execute("SET LOCAL synchronous_commit = off"),
        // MySQL's flush policy is the server's alone (`innodb_flush_log_at_trx_commit`).
        DbConnection::Sqlite(_) | DbConnection::Mysql(_) => Ok(()),
    }
}

/// Runs `f` in a read-only transaction, so a report sees one consistent state of the books.
pub fn read_transaction<T, E, F>(conn: &mut DbConnection, f: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
    E: From<DieselError>,
{
    conn.transaction(|conn| {
        if let DbConnection::Postgresql(pg) = conn {
            // A report over the whole books may take longer than any write should.
            pg.batch_execute(
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
                 SET LOCAL statement_timeout = 0",
            )?;
        }
        f(conn)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_follow_the_cores_between_two_and_four_and_leave_a_connection_free() {
        let pg = DatabaseUrl::parse("postgres://db/payhook").unwrap();
        let lite = DatabaseUrl::parse("sqlite://payhook.db").unwrap();
        let cases = [
            (1, 10, 2),
            (2, 10, 2),
            (3, 10, 3),
            (8, 10, 4),
            (8, 3, 2),
            (8, 1, 1),
        ];
        for (cores, pool, writers) in cases {
            assert_eq!(
                pg.default_writers_for(pool, cores),
                writers,
                "{cores} cores, pool {pool}"
            );
            assert_eq!(lite.default_writers_for(pool, cores), 1);
        }
    }

    #[test]
    fn redacted_urls_show_scheme_host_port_and_database_only() {
        for (url, shown) in [
            (
                "postgres://payhook:p%40ss%2Fw0rd@db.example:5433/payhook?sslmode=require",
                "postgres://db.example:5433/payhook",
            ),
            (
                "postgresql://payhook:p@ss@db.example/payhook",
                "postgresql://db.example/payhook",
            ),
            (
                "postgres://db.example/payhook?user=payhook&password=s3cr3t&application_name=a@b",
                "postgres://db.example/payhook",
            ),
            (
                "postgres://payhook:s3cr3t@[::1]:5432/payhook#s3cr3t",
                "postgres://[::1]:5432/payhook",
            ),
            (
                "postgres://payhook:s3/cr3t@db.example/payhook",
                "postgres://db.example/payhook",
            ),
            (
                "postgres://payhook:s3cr3t@db1:5432,db2:5432/payhook?target_session_attrs=read-write",
                "postgres://db1:5432,db2:5432/payhook",
            ),
            (
                "mysql://payhook:s3cr3t@db.example:3306/payhook?unix_socket=/run/s3cr3t",
                "mysql://db.example:3306/payhook",
            ),
            ("sqlite://data/payhook.db", "sqlite://data/payhook.db"),
        ] {
            let redacted = DatabaseUrl::parse(url).unwrap().redacted();
            assert_eq!(redacted, shown, "{url}");
        }
    }

    #[test]
    fn a_full_disk_is_no_conflict_to_try_again_at_once() {
        let error = |message: &str| {
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_owned()))
        };
        assert!(is_transient(&error("database is locked")));
        // SQLITE_FULL: every attempt would meet the same full disk. It is answered retry at
        // once, and the provider's next delivery finds the space, once someone has freed it.
        assert!(!is_transient(&error("database or disk is full")));
        assert!(!is_lock_timeout(&error("database or disk is full")));
    }

    #[test]
    fn backoff_grows_with_the_attempt_and_stays_within_twice_its_base() {
        for attempt in 1..=12 {
            let base = 2u64 << attempt.min(8);
            let waits: Vec<u64> = (0..200)
                .map(|_| backoff(attempt).as_millis() as u64)
                .collect();
            assert!(
                waits.iter().all(|w| (base..2 * base).contains(w)),
                "{attempt}: {waits:?}"
            );
            assert!(
                waits.iter().any(|w| *w != waits[0]),
                "{attempt}: no jitter in {waits:?}"
            );
        }
    }

    #[test]
    fn postgresql_connections_get_keepalives_without_losing_the_users_settings() {
        let all = "keepalives=1&keepalives_idle=30&keepalives_interval=10&keepalives_count=3";
        for (given, expected) in [
            (
                "postgres://u:p%40ss@db:5432/books".to_owned(),
                format!("postgres://u:p%40ss@db:5432/books?{all}"),
            ),
            (
                "postgresql://h1:5432,h2:5432/db?target_session_attrs=read-write".to_owned(),
                format!("postgresql://h1:5432,h2:5432/db?target_session_attrs=read-write&{all}"),
            ),
            (
                "postgresql://user@/db?host=/run/postgresql".to_owned(),
                format!("postgresql://user@/db?host=/run/postgresql&{all}"),
            ),
            (
                "postgres://db/books?".to_owned(),
                format!("postgres://db/books?{all}"),
            ),
        ] {
            assert_eq!(postgresql_session_url(&given), expected);
        }
        let theirs = "postgres://db/books?sslmode=require&keepalives_idle=5&options=-c%20x%3Dy";
        let url = postgresql_session_url(theirs);
        assert_eq!(
            url,
            format!("{theirs}&keepalives=1&keepalives_interval=10&keepalives_count=3")
        );
    }
}

//! A full disk under SQLite. One instance keeps its database on a small tmpfs and its log on
//! another. The database's disk is filled first, with the log's still writable, so that the log
//! can be read for why every notification was retried; then the log's too, as when both share one
//! disk: every notification is still answered retry, nothing is credited, and the process keeps
//! running and answering. Once space is freed the same process, never restarted, credits every
//! order once, the books verify, and the log says how many lines it lost.
//!
//! Mounting needs the privilege to (root, and a container that allows it); where it is missing
//! the test says so on stderr, in a line starting `SKIPPED:`, and returns.

use super::*;

/// The database's disk: room for SQLite's WAL to reach its automatic checkpoint (1,000 pages,
/// about 4 MB) and for the database to take it in.
const DB_DISK: &str = "8m";

/// The log's disk.
const LOG_DISK: &str = "1m";

/// How many orders are paid while the disk is full.
const ORDERS: usize = 300;

/// A tmpfs mounted for one test; unmounted when dropped, lazily if something still holds it.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`, or says why it cannot.
    fn mount(dir: PathBuf, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`mount -t tmpfs` failed ({}): {}",
                out.status,
                // One line, whatever mount printed.
                String::from_utf8_lossy(&out.stderr)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        Ok(Tmpfs { dir })
    }

    /// Writes zeros to a filler file until the file system refuses more; returns how many bytes
    /// it took. Chunks shrink to a byte, so that no page is left with room.
    fn fill(&self) -> u64 {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler()).unwrap();
        let mut filled = 0;
        for chunk in [1 << 16, 1 << 12, 1] {
            let zeros = vec![0u8; chunk];
            loop {
                match file.write(&zeros) {
                    Ok(0) => break,
                    Ok(n) => filled += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => panic!("filling {}: {e}", self.dir.display()),
                }
            }
        }
        filled
    }

    /// Deletes the filler file.
    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// `/readyz`'s status (`None`: no answer within 5 s) and how long it took.
fn readyz(instance: &Instance) -> (Option<u16>, Duration) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let status = client
        .get(format!("{}/readyz", instance.url()))
        .send()
        .ok()
        .map(|r| r.status().as_u16());
    (status, started.elapsed())
}

/// Asserts that `/readyz` answers 200 promptly: the database reads, whatever the disk.
fn assert_ready(instance: &Instance, when: &str) -> Duration {
    let (status, took) = readyz(instance);
    assert_eq!(status, Some(200), "/readyz {when}");
    assert!(
        took < Duration::from_secs(1),
        "/readyz {when} took {took:?}"
    );
    took
}

/// A counter's value in the instance's `/metrics`, 0 when it is not there yet.
fn counter(instance: &Instance, name: &str) -> u64 {
    let text = reqwest::blocking::get(format!("{}/metrics", instance.url()))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// The sizes of the database, its WAL and its shared-memory file.
fn db_file_sizes(db: &Path) -> String {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let path = PathBuf::from(format!("{}{suffix}", db.display()));
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            format!("payhook.db{suffix} {size} B")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checkpoints the whole WAL into the database and truncates it, from a connection of the test's
/// own while payhook runs; asserts that nothing held it back (a connection of payhook's stuck in a
/// read transaction would).
fn checkpoint_and_truncate_the_wal(database_url: &str) {
    use diesel::prelude::*;
    #[derive(QueryableByName, Debug)]
    struct Checkpoint {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        busy: i32,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        log: i32,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        checkpointed: i32,
    }
    let path = database_url.trim_start_matches("sqlite://");
    let mut conn = diesel::SqliteConnection::establish(path).unwrap();
    diesel::sql_query("PRAGMA busy_timeout = 5000")
        .execute(&mut conn)
        .unwrap();
    let done: Checkpoint = diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)")
        .get_result(&mut conn)
        .unwrap();
    assert!(
        done.busy == 0 && done.log == done.checkpointed,
        "the WAL was not checkpointed whole: {done:?}"
    );
    let wal = std::fs::metadata(format!("{path}-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL was not truncated");
}

/// Sends every notification once while a disk is full: each is answered retry and none is
/// credited. Returns the replay.
fn replay_on_a_full_disk(
    instance: &Instance,
    file: &Path,
    results: PathBuf,
    database_url: &str,
    scenario: &str,
) -> Replayed {
    let full = replay(&instance.url(), file, &results, 1, 16);
    report(scenario, &full);
    assert_eq!(
        answers(&full),
        (0, ORDERS as u64, 0, 0),
        "every notification is answered retry while the disk is full"
    );
    assert!(
        credits_by_order(database_url).is_empty(),
        "a ledger row was written while the disk was full"
    );
    full
}

#[test]
fn a_full_disk_gets_retries_and_once_freed_the_same_process_credits_everything() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mounted = Tmpfs::mount(dir.path().join("db-disk"), DB_DISK)
        .and_then(|db| Ok((db, Tmpfs::mount(dir.path().join("log-disk"), LOG_DISK)?)));
    let (db_disk, log_disk) = match mounted {
        Ok(disks) => disks,
        Err(why) => {
            say!("SKIPPED: the full-disk scenario (SQLite) needs to mount a tmpfs: {why}");
            return;
        }
    };
    let db = db_disk.dir.join("payhook.db");
    let database_url = format!("sqlite://{}", db.display());
    let mut instance = Instance::start_logging_to(log_disk.dir.join("payhook.log"), &database_url);
    instance.wait_ready();
    let pid = instance.running_pid().expect("payhook serve runs");
    let file = fixtures(dir.path(), &database_url, ORDERS);
    // Everything so far moves into the database, so that any commit from now on needs new
    // space: a WAL that was reset but kept its length would take commits in space it holds.
    checkpoint_and_truncate_the_wal(&database_url);
    say!(
        "full disk (SQLite): the database on a {DB_DISK} tmpfs, the log on a {LOG_DISK} tmpfs, \
         {ORDERS} pending orders; {}",
        db_file_sizes(&db)
    );

    // The database's disk is full; the log's has room, and says why each was retried.
    let filled = db_disk.fill();
    let logged = std::fs::metadata(&instance.log).unwrap().len() as usize;
    let full = replay_on_a_full_disk(
        &instance,
        &file,
        dir.path().join("full-db.ndjson"),
        &database_url,
        &format!("  database disk full ({filled} bytes of filler)"),
    );
    let log = std::fs::read_to_string(&instance.log).unwrap();
    let lines: Vec<&str> = log[logged..]
        .lines()
        .filter(|l| l.contains(" payhook::notify notification "))
        .collect();
    assert_eq!(lines.len(), ORDERS, "one log line per notification");
    for line in &lines {
        assert!(
            line.contains("answer=retry") && line.contains("database or disk is full"),
            "{line}"
        );
    }
    let ready_full = assert_ready(&instance, "with the database's disk full");

    // The log's disk too, as when both share one: lines are lost, the process serves on.
    let filled_log = log_disk.fill();
    let both = replay_on_a_full_disk(
        &instance,
        &file,
        dir.path().join("full-both.ndjson"),
        &database_url,
        &format!("  log disk full too ({filled_log} bytes of filler)"),
    );
    let ready_both = assert_ready(&instance, "with both disks full");
    assert_eq!(
        instance.running_pid(),
        Some(pid),
        "payhook serve still runs"
    );
    let worst = [&full, &both]
        .iter()
        .map(|r| r.summary["latency_ms"]["max"].as_f64().unwrap())
        .fold(0.0, f64::max);
    say!(
        "  while full: worst answer {worst:.0} ms, /readyz 200 in {:.1} ms and {:.1} ms; {}",
        ready_full.as_secs_f64() * 1e3,
        ready_both.as_secs_f64() * 1e3,
        db_file_sizes(&db)
    );
    // Prompt, even on a busy machine: a stuck writer would hold answers for the commit timeout
    // (30 s) or past replay's own (15 s).
    assert!(
        worst < 10_000.0,
        "a retry took {worst:.0} ms while the disk was full"
    );

    // Space is freed; the same process, never restarted, credits everything.
    db_disk.free();
    log_disk.free();
    let after = replay(
        &instance.url(),
        &file,
        &dir.path().join("freed.ndjson"),
        1,
        16,
    );
    report("  space freed, the same process", &after);
    assert_eq!(
        answers(&after),
        (ORDERS as u64, 0, 0, 0),
        "every notification is acked once space is freed"
    );
    assert_eq!(assert_acked_are_credited(&after, &database_url), ORDERS);
    let credited = credits_by_order(&database_url).len();
    assert_eq!(credited, ORDERS, "every order credited once");
    assert_ready(&instance, "once space is freed");
    assert_eq!(
        instance.running_pid(),
        Some(pid),
        "payhook serve was not restarted"
    );
    let sizes = db_file_sizes(&db);
    checkpoint_and_truncate_the_wal(&database_url);
    let books = verify(&database_url);
    assert!(
        books.contains(&format!("{ORDERS} paid orders"))
            && books.contains(&format!("{ORDERS} ledger entries")),
        "{books}"
    );

    // The log lost what came while its disk was full and says so; no line runs into the next,
    // not even the one the full disk cut short: every line starts where a line starts (with its
    // timestamp's year, of which a line cut short may keep as little as its first digit).
    let log = std::fs::read_to_string(&instance.log).unwrap();
    for line in log.lines() {
        let headers = [" INFO  ", " WARN  ", " ERROR ", " DEBUG ", " TRACE "]
            .iter()
            .map(|level| line.matches(level).count())
            .sum::<usize>();
        assert!(
            line.starts_with('2') && headers <= 1,
            "a torn log line: {line}"
        );
    }
    let lost_metric = counter(&instance, "payhook_log_lines_lost_total");
    let note = log
        .lines()
        .find(|l| l.contains("log lines lost"))
        .expect("the log says that lines were lost");
    assert!(
        note.contains(&format!(" lost={lost_metric} ")) && note.contains("No space left"),
        "{note} (payhook_log_lines_lost_total {lost_metric})"
    );
    say!(
        "  {credited} orders credited once after space was freed; {lost_metric} log lines lost \
         while the log's disk was full; {sizes}"
    );
}

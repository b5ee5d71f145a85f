//! A flood of garbage: thousands of distinct bodies of 60 KiB that never verify, 64 in flight, at
//! one `payhook serve` instance while genuine notifications arrive alongside. Every genuine one is
//! acked and credited once, `/readyz` answers 200 throughout, and the database grows by a bounded
//! amount: a channel keeps only its newest `inbox.keep_rejected` rejected requests, however many
//! arrive.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;

use payhook::books::inbox::{self, REJECTED_BODY_BYTES};

use super::*;

/// `inbox.keep_rejected` here: small, so that the flood stores many times what is kept.
const KEEP: u64 = 200;
/// Distinct garbage bodies sent to each channel.
const GARBAGE: [(&str, usize); 2] = [("alipay", 5000), ("gateway", 3000)];
const IN_FLIGHT: usize = 64;
const BODY_BYTES: usize = 60 * 1024;
const GENUINE: usize = 300;
/// Most bytes one kept rejected row may take on disk: it holds at most about 8 KiB (the first
/// 4 KiB of its body, 4 KiB of headers), and as much again for its index entries, pages part full,
/// and the space of deleted rows that the database has not reused yet.
const REJECTED_ROW_BYTES: u64 = 16 * 1024;
/// Most bytes one genuine notification may add: its inbox row with the whole signed body, its
/// ledger row and its order's new version.
const GENUINE_BYTES: u64 = 8 * 1024;
/// What a database may grow by whatever is stored: its log, a new extent of a file.
const SLACK_BYTES: u64 = 8 * 1024 * 1024;
/// What it may grow by in the flood's second half, once it holds what it keeps: less than what the
/// rejected requests stored in that half would take if they were all kept.
const LATE_SLACK_BYTES: u64 = 3 * 1024 * 1024;

mod a_flood_of_garbage_leaves_genuine_notifications_credited_and_the_database_bounded {
    use super::*;

    #[test]
    fn postgresql() {
        super::a_flood_of_garbage(Some(Backend::Postgresql));
    }

    #[test]
    fn mariadb() {
        super::a_flood_of_garbage(Some(Backend::Mariadb));
    }

    #[test]
    fn sqlite() {
        super::a_flood_of_garbage(None);
    }
}

/// The database of one flood, and how big it is on disk.
struct Database {
    server: Option<Server>,
    database_url: String,
    dir: tempfile::TempDir,
}

impl Database {
    /// A fresh database on a server of its own, or a SQLite file when `backend` is `None`.
    fn new(backend: Option<Backend>) -> Database {
        let dir = tempfile::tempdir().unwrap();
        let server = backend.map(Server::start);
        if let Some(Server::Postgresql(cluster)) = &server {
            // Autovacuum looks every second rather than every minute (the default), so that the
            // space of pruned rows is reused within this test's seconds as it is within a minute
            // or two on a default server.
            cluster.admin_exec("ALTER SYSTEM SET autovacuum_naptime = 1");
            cluster.admin_exec("SELECT pg_reload_conf()");
        }
        let database_url = match &server {
            Some(server) => server.new_database(),
            None => format!("sqlite://{}", dir.path().join("flood.db").display()),
        };
        Database {
            server,
            database_url,
            dir,
        }
    }

    fn name(&self) -> &'static str {
        self.server.as_ref().map_or("SQLite", Server::name)
    }

    /// The database's size: PostgreSQL's own figure, MariaDB's files, SQLite's file and its
    /// write-ahead log.
    fn size(&self) -> u64 {
        let files = |paths: &[PathBuf]| -> u64 {
            paths
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum()
        };
        match &self.server {
            Some(server) => database_bytes(server, &self.database_url),
            None => {
                let db = self.dir.path().join("flood.db");
                files(&[db.clone(), PathBuf::from(format!("{}-wal", db.display()))])
            }
        }
    }
}

/// Garbage body `i` for `channel`: the start of what the provider would send, then 60 KiB of
/// letters and digits of its own, so that no two bodies are alike and none compresses.
fn garbage(channel: &str, i: usize) -> (&'static str, Vec<u8>) {
    let (content_type, start) = match channel {
        "alipay" => (
            "application/x-www-form-urlencoded",
            format!("out_trade_no=FLOOD{i}&trade_status=TRADE_SUCCESS&total_amount=1.00&junk="),
        ),
        _ => (
            "application/json",
            format!("{{\"type\":\"payment.succeeded\",\"flood\":{i},\"junk\":\""),
        ),
    };
    const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut bytes = start.into_bytes();
    while bytes.len() < BODY_BYTES - 2 {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.push(LETTERS[(state % LETTERS.len() as u64) as usize]);
    }
    if channel != "alipay" {
        bytes.extend_from_slice(b"\"}");
    }
    (content_type, bytes)
}

/// Sends every garbage body from `IN_FLIGHT` threads; returns the answers by status ("error" for
/// a request that got none). `sent` counts the answered ones as they come.
fn flood(url: &str, sent: Arc<AtomicUsize>) -> BTreeMap<String, usize> {
    // The channels interleaved, so that every one is flooded at once.
    let mut work: Vec<(usize, &'static str, usize)> = GARBAGE
        .iter()
        .flat_map(|(channel, n)| (0..*n).map(move |i| (i * 1_000_000 / n, *channel, i)))
        .collect();
    work.sort_unstable();
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (work, next, sent) = (work.clone(), next.clone(), sent.clone());
            let url = url.to_owned();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut answers: BTreeMap<String, usize> = BTreeMap::new();
                while let Some(&(_, channel, i)) = work.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (content_type, body) = garbage(channel, i);
                    let answer = client
                        .post(format!("{url}/notify/{channel}"))
                        .header("Content-Type", content_type)
                        .body(body)
                        .send()
                        .map_or_else(|_| "error".to_owned(), |r| r.status().as_u16().to_string());
                    *answers.entry(format!("{channel} {answer}")).or_default() += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                answers
            })
        })
        .collect();
    let mut answers = BTreeMap::new();
    for thread in threads {
        for (status, n) in thread.join().unwrap() {
            *answers.entry(status).or_default() += n;
        }
    }
    answers
}

/// Polls `/readyz` every 50 ms until told to stop; returns the answers by status.
fn watch_readiness(
    url: String,
    watching: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeMap<String, usize>> {
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut seen = BTreeMap::new();
        while watching.load(Ordering::Relaxed) {
            let status = client.get(format!("{url}/readyz")).send().map_or_else(
                |e| format!("error: {e}"),
                |r| r.status().as_u16().to_string(),
            );
            *seen.entry(status).or_default() += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    })
}

/// Rejected rows kept, by channel.
fn rejected_by_channel(database_url: &str) -> BTreeMap<String, i64> {
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Text};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        channel: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let settings = payhook::config::Settings::from_toml("").unwrap();
    let pool = payhook::db::connect(database_url, &settings.pool).expect("connect for checks");
    let mut conn = pool.get().expect("a connection for checks");
    diesel::sql_query(
        "SELECT channel, COUNT(*) AS n FROM notifications WHERE outcome = 'rejected' \
         GROUP BY channel",
    )
    .load::<Row>(&mut *conn)
    .unwrap()
    .into_iter()
    .map(|r| (r.channel, r.n))
    .collect()
}

fn a_flood_of_garbage(backend: Option<Backend>) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = Database::new(backend);
    let dir = db.dir.path();
    let config = dir.join("flood.toml");
    let demo = std::fs::read_to_string(demo_config()).unwrap();
    std::fs::write(
        &config,
        format!("{demo}\n[inbox]\nkeep_rejected = {KEEP}\n"),
    )
    .unwrap();
    let instance = Instance::start_with(dir, 0, &db.database_url, &config);
    instance.wait_ready();
    let fixtures = fixtures(dir, &db.database_url, GENUINE);
    let stored_so_far = || {
        let log = std::fs::read_to_string(&instance.log).unwrap_or_default();
        log.matches("(stored as notification").count()
    };
    let before = db.size();

    let watching = Arc::new(AtomicBool::new(true));
    let watcher = watch_readiness(instance.url(), watching.clone());
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let flooding = {
        let (url, sent) = (instance.url(), sent.clone());
        std::thread::spawn(move || flood(&url, sent))
    };
    let reached = |n: usize| {
        while sent.load(Ordering::Relaxed) < n && !flooding.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // The genuine notifications arrive once the flood is under way, eight at a time.
    reached(300);
    let results = dir.join("genuine.ndjson");
    let genuine = replay_command(&instance.url(), &fixtures, &results, 1, 8)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn replay");
    // Halfway, the database has the size it keeps from then on.
    let sent_garbage: usize = GARBAGE.iter().map(|(_, n)| n).sum();
    reached(sent_garbage / 2);
    let (halfway, stored_halfway) = (db.size(), stored_so_far());
    let garbage_answers = flooding.join().expect("the flood's threads");
    let flood_secs = started.elapsed().as_secs_f64();
    let r = finish(genuine, &results);
    watching.store(false, Ordering::Relaxed);
    let readiness = watcher.join().unwrap();
    let after = db.size();

    let stored = stored_so_far();
    let unstored = std::fs::read_to_string(&instance.log)
        .unwrap()
        .matches("(not stored:")
        .count();
    let kept = rejected_by_channel(&db.database_url);
    let (ack, retry, http, transport) = answers(&r);
    let credited = credits_by_order(&db.database_url).len();
    let worst = r.summary["latency_ms"]["max"].as_f64().unwrap_or(f64::NAN);
    let most = KEEP + inbox::prune_every(KEEP) - 1;
    let bound = GARBAGE.len() as u64 * most * REJECTED_ROW_BYTES
        + GENUINE as u64 * GENUINE_BYTES
        + SLACK_BYTES;
    let (growth, late_growth) = (after.saturating_sub(before), after.saturating_sub(halfway));
    let late_stored = stored - stored_halfway;
    say!(
        "{}: {sent_garbage} garbage bodies of {} KiB at {IN_FLIGHT} in flight in {flood_secs:.1} \
         s, answered {garbage_answers:?}",
        db.name(),
        BODY_BYTES / 1024
    );
    say!(
        "  {stored} stored as rejected ({late_stored} in the second half), {unstored} not \
         stored (their pool busy); kept {kept:?} (keep_rejected = {KEEP}, at most {most})"
    );
    say!(
        "  genuine: {GENUINE} sent, {ack} acked, {retry} retry, {http} HTTP error, {transport} \
         transport error, {credited} credited; slowest answer {worst:.0} ms"
    );
    say!("  /readyz answered {readiness:?}");
    say!(
        "  database grew by {growth} bytes (bound {bound}), {late_growth} of them in the second \
         half: {before} -> {halfway} -> {after}"
    );

    // Every genuine notification is acked and credited once, and the books hold.
    assert_eq!((ack, retry, http, transport), (GENUINE as u64, 0, 0, 0));
    assert_eq!(assert_acked_are_credited(&r, &db.database_url), GENUINE);
    assert_eq!(credited, GENUINE);
    let checked = verify(&db.database_url);
    assert!(
        checked.contains(&format!("{GENUINE} paid orders"))
            && checked.contains(&format!("{GENUINE} ledger entries")),
        "{checked}"
    );
    // Every garbage body got the provider's refusal, never an ack nor a server error.
    let answered: usize = garbage_answers.values().sum();
    assert_eq!(answered, sent_garbage);
    for (answer, n) in &garbage_answers {
        let status = answer.rsplit(' ').next().unwrap();
        assert!(
            matches!(status, "400" | "401"),
            "{n} garbage bodies answered {answer}"
        );
    }
    // Ready throughout.
    assert!(
        readiness.keys().all(|status| status == "200"),
        "/readyz answered {readiness:?}"
    );
    assert!(readiness.values().sum::<usize>() >= 10, "{readiness:?}");

    // Each channel keeps its newest KEEP, and at most what arrived since its last prune more.
    for (channel, _) in GARBAGE {
        let n = kept.get(channel).copied().unwrap_or(0) as u64;
        assert!(
            n <= most,
            "{channel} keeps {n} rejected rows, more than {most}"
        );
    }
    // The database grew by no more than what it may keep, and hardly at all once it held that,
    // though the second half of the flood stored more than LATE_SLACK_BYTES of bodies alone.
    assert!(
        growth <= bound,
        "the database grew by {growth} bytes, more than {bound}"
    );
    assert!(
        late_stored as u64 * REJECTED_BODY_BYTES as u64 > LATE_SLACK_BYTES,
        "the second half of the flood stored too little ({late_stored} rows) to tell"
    );
    assert!(
        late_growth <= LATE_SLACK_BYTES,
        "the database grew by {late_growth} bytes in the flood's second half"
    );
    assert_no_secrets_in(std::slice::from_ref(&instance.log));
}

//! What operators watch: log lines to tail and Prometheus metrics to scrape.
//!
//! Log lines carry their facts as key-value pairs (`request_id`, `channel`, `outcome`, ...), so
//! the text format reads `key=value` and the JSON format gives one object per line with the same
//! keys. Secrets, signatures and bodies are never logged: callers only pass ids, amounts and
//! outcomes.

use crate::domain::notification::NotificationKind;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-22T10:00:00.000Z INFO payhook::notify notification request_id=... outcome=credited`
    Text,
    /// One JSON object per line: `{"ts":..,"level":..,"target":..,"msg":..,"request_id":..}`
    Json,
}

/// Collects a record's key-value pairs.
struct Pairs(Vec<(String, String)>);

impl<'kvs> log::kv::VisitSource<'kvs> for Pairs {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        self.0.push((key.to_string(), value.to_string()));
        Ok(())
    }
}

fn pairs(record: &log::Record<'_>) -> Vec<(String, String)> {
    let mut pairs = Pairs(Vec::new());
    let _ = record.key_values().visit(&mut pairs);
    pairs.0
}

/// One log line as a JSON object: the record's fields, then its key-value pairs.
fn json_line(record: &log::Record<'_>, ts: String) -> serde_json::Value {
    let mut line = serde_json::Map::new();
    line.insert("ts".into(), ts.into());
    line.insert("level".into(), record.level().as_str().into());
    line.insert("target".into(), record.target().into());
    line.insert("msg".into(), record.args().to_string().into());
    let _ = record.key_values().visit(&mut JsonPairs(&mut line));
    serde_json::Value::Object(line)
}

/// Adds a record's key-value pairs to a JSON object.
struct JsonPairs<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for JsonPairs<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let mut json = JsonValue(serde_json::Value::Null);
        value.visit(&mut json)?;
        self.0.insert(key.to_string(), json.0);
        Ok(())
    }
}

/// A log value as JSON of the type it was logged with, so that an identifier that reads as a
/// number (`order_no=000123`) stays the string it is.
struct JsonValue(serde_json::Value);

impl<'v> log::kv::VisitValue<'v> for JsonValue {
    fn visit_any(&mut self, value: log::kv::Value<'_>) -> Result<(), log::kv::Error> {
        self.0 = value.to_string().into();
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), log::kv::Error> {
        self.0 = serde_json::Value::Null;
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), log::kv::Error> {
        self.0 = value.into();
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), log::kv::Error> {
        self.0 = value.into();
        Ok(())
    }

    fn visit_f64(&mut self, value: f64) -> Result<(), log::kv::Error> {
        // NaN and infinities have no JSON number.
        self.0 = serde_json::Number::from_f64(value)
            .map_or_else(|| value.to_string().into(), serde_json::Value::Number);
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), log::kv::Error> {
        self.0 = value.into();
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), log::kv::Error> {
        self.0 = value.into();
        Ok(())
    }
}

/// Writes `record` as one line in `format`, stamped with the time now.
fn write_line(
    out: &mut dyn Write,
    format: LogFormat,
    record: &log::Record<'_>,
) -> std::io::Result<()> {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match format {
        LogFormat::Text => {
            write!(
                out,
                "{ts} {:<5} {} {}",
                record.level(),
                record.target(),
                record.args()
            )?;
            for (k, v) in pairs(record) {
                if v.contains([' ', '"', '=']) || v.is_empty() {
                    write!(out, " {k}={v:?}")?;
                } else {
                    write!(out, " {k}={v}")?;
                }
            }
            writeln!(out)
        }
        LogFormat::Json => writeln!(out, "{}", json_line(record, ts)),
    }
}

/// The log file. A line the file refuses (its disk is full, or failing) is lost, never fatal:
/// the process goes on serving, and `payhook_log_lines_lost_total` counts it. A line cut short
/// is ended before the next one, so that every line after it stays whole; the first line that
/// gets through again is preceded by one saying how many were lost, and why.
struct LogFile<W> {
    file: W,
    format: LogFormat,
    /// The file ends inside a line: a write failed part-way through one.
    mid_line: bool,
    /// Lines lost since the last one written.
    lost: u64,
    /// Why the last one was lost.
    why: String,
}

impl<W: Write> LogFile<W> {
    fn new(file: W, format: LogFormat) -> LogFile<W> {
        LogFile {
            file,
            format,
            mid_line: false,
            lost: 0,
            why: String::new(),
        }
    }

    /// Appends `bytes` whole, or fails; keeps track of whether the file ends inside a line.
    fn put(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match self.file.write(bytes) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let (written, rest) = bytes.split_at(n.min(bytes.len()));
                    self.mid_line = written.last() != Some(&b'\n');
                    bytes = rest;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Appends one line, after ending a line cut short and saying what was lost.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.mid_line {
            self.put(b"\n")?;
        }
        if self.lost > 0 {
            let mut note = Vec::new();
            let pairs: [(&str, log::kv::Value); 2] = [
                ("lost", log::kv::Value::from(self.lost)),
                ("error", log::kv::Value::from(self.why.as_str())),
            ];
            write_line(
                &mut note,
                self.format,
                &log::Record::builder()
                    .args(format_args!(
                        "log lines lost: the log file could not be written"
                    ))
                    .level(log::Level::Warn)
                    .target("payhook::telemetry")
                    .key_values(&pairs)
                    .build(),
            )?;
            self.put(&note)?;
            self.lost = 0;
        }
        self.put(line)
    }
}

impl<W: Write> Write for LogFile<W> {
    /// Takes one whole line: the logger hands each over in one piece.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        match self.append(line) {
            Ok(()) => Ok(line.len()),
            Err(e) => {
                self.lost += 1;
                self.why = e.to_string();
                metrics::counter!(LOG_LINES_LOST).increment(1);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Installs the logger: level from `RUST_LOG` (default `info`), to stderr or appended to `file`.
pub fn init_logging(format: LogFormat, file: Option<&Path>) -> anyhow::Result<()> {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(path) = file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
        builder.target(env_logger::Target::Pipe(Box::new(LogFile::new(
            file, format,
        ))));
    }
    builder.format(move |buf, record| write_line(buf, format, record));
    builder
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// Bucket bounds (seconds) for the crediting transaction's latency.
const APPLY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

/// The process's Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(APPLY_SECONDS.to_owned()),
                &APPLY_BUCKETS,
            )
            .expect("bucket bounds are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (an embedding program's): keep ours local
        // to /metrics then, rather than fail.
        if metrics::set_global_recorder(recorder).is_err() {
            log::warn!(
                "a metrics recorder was already installed; /metrics shows only payhook's own"
            );
        }
        handle
    })
}

pub const NOTIFICATIONS: &str = "payhook_notifications_total";
pub const ANSWERS: &str = "payhook_answers_total";
pub const ANOMALIES: &str = "payhook_anomalies_total";
pub const MONEY_BACK: &str = "payhook_money_back_total";
pub const APPLY_SECONDS: &str = "payhook_apply_seconds";
pub const POOL_CONNECTIONS: &str = "payhook_pool_connections";
pub const BATCH_NOTIFICATIONS: &str = "payhook_batch_notifications";
pub const BATCH_SECONDS: &str = "payhook_batch_seconds";
pub const DEBITS: &str = "payhook_debits_total";
pub const QUERIES: &str = "payhook_recovery_queries_total";
pub const CLOSES: &str = "payhook_recovery_closes_total";
pub const OLDEST_PENDING: &str = "payhook_oldest_pending_order_seconds";
pub const RESOLUTIONS: &str = "payhook_anomaly_resolutions_total";
pub const LOG_LINES_LOST: &str = "payhook_log_lines_lost_total";

/// Counts one notification's outcome and the answer it got.
pub fn record_notification(channel: &str, outcome: &'static str, answer: &'static str) {
    metrics::counter!(NOTIFICATIONS, "channel" => channel.to_owned(), "outcome" => outcome)
        .increment(1);
    metrics::counter!(ANSWERS, "channel" => channel.to_owned(), "answer" => answer).increment(1);
}

/// Counts one refund, chargeback or reversal notification (or a refund the provider reports
/// failed) by what it came to.
pub fn record_money_back(channel: &str, kind: &'static str, outcome: &'static str) {
    metrics::counter!(MONEY_BACK, "channel" => channel.to_owned(), "kind" => kind,
        "outcome" => outcome)
    .increment(1);
}

/// Counts one query of a provider by what it came to: the crediting outcome of what it found,
/// `not_paid`, `unreachable` or `invalid`.
pub fn record_query(channel: &str, result: &'static str) {
    metrics::counter!(QUERIES, "channel" => channel.to_owned(), "result" => result).increment(1);
}

/// Counts one close of an expired order: `closed`, `not_pending`, `paid_meanwhile` or `failed`.
pub fn record_close(channel: &str, result: &'static str) {
    metrics::counter!(CLOSES, "channel" => channel.to_owned(), "result" => result).increment(1);
}

/// The age of the oldest pending order, in seconds (0 when none is pending).
pub fn record_oldest_pending(seconds: f64) {
    metrics::gauge!(OLDEST_PENDING).set(seconds);
}

/// The `kind` label of a notification of money going back, if it is one.
pub fn money_back_kind(kind: &NotificationKind) -> Option<&'static str> {
    match kind {
        NotificationKind::Refund(_) => Some("refund"),
        NotificationKind::Chargeback(_) => Some("chargeback"),
        NotificationKind::ChargebackReversal(_) => Some("chargeback_reversal"),
        NotificationKind::RefundFailed(_) => Some("refund_failed"),
        NotificationKind::Paid | NotificationKind::Closed | NotificationKind::Other(_) => None,
    }
}

pub fn record_anomaly(channel: &str) {
    metrics::counter!(ANOMALIES, "channel" => channel.to_owned()).increment(1);
}

/// Counts one anomaly resolved in the console: `dismissed`, `credited` or `refunded_to_buyer`.
pub fn record_resolution(resolution: &'static str) {
    metrics::counter!(RESOLUTIONS, "resolution" => resolution).increment(1);
}

pub fn record_apply_seconds(seconds: f64) {
    metrics::histogram!(APPLY_SECONDS).record(seconds);
}

/// One group commit: how many notifications it held and how long it took.
pub fn record_batch(notifications: usize, seconds: f64) {
    metrics::histogram!(BATCH_NOTIFICATIONS).record(notifications as f64);
    metrics::histogram!(BATCH_SECONDS).record(seconds);
}

/// Counts one debit request by how it ended: `debited`, `repeat`, `conflict`,
/// `insufficient_balance` or `invalid`.
pub fn record_debit(outcome: &'static str) {
    metrics::counter!(DEBITS, "outcome" => outcome).increment(1);
}

/// How long this instance's crediting took, read from its histogram: the quantiles are the upper
/// bounds of the buckets they fall in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_seconds: f64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
}

/// The apply latency so far, or `None` before the first notification was applied.
pub fn apply_latency() -> Option<Latency> {
    latency_in(&prometheus().render(), APPLY_SECONDS)
}

/// Reads histogram `name` out of Prometheus text.
fn latency_in(text: &str, name: &str) -> Option<Latency> {
    let bucket = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let (mut sum, mut count) = (None, None);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&bucket) {
            let (le, n) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            buckets.push((le, n.trim().parse().ok()?));
        } else if let Some(rest) = line.strip_prefix(&format!("{name}_sum ")) {
            sum = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix(&format!("{name}_count ")) {
            count = rest.trim().parse::<u64>().ok();
        }
    }
    let count = count.filter(|c| *c > 0)?;
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let quantile = |q: f64| {
        let rank = (q * count as f64).ceil() as u64;
        buckets
            .iter()
            .find(|(_, n)| *n >= rank)
            .map_or(f64::INFINITY, |(le, _)| *le)
    };
    Some(Latency {
        count,
        mean_seconds: sum? / count as f64,
        p50_seconds: quantile(0.5),
        p99_seconds: quantile(0.99),
    })
}

/// Renders every metric, with the pool's gauges read now.
pub fn render(pool: &crate::db::Pool) -> String {
    let handle = prometheus();
    let state = pool.state();
    let idle = f64::from(state.idle_connections);
    let in_use = f64::from(state.connections.saturating_sub(state.idle_connections));
    metrics::gauge!(POOL_CONNECTIONS, "state" => "in_use").set(in_use);
    metrics::gauge!(POOL_CONNECTIONS, "state" => "idle").set(idle);
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::kv::Value;

    #[test]
    fn latency_is_read_from_the_histogram_s_buckets() {
        let text = "payhook_apply_seconds_bucket{le=\"0.001\"} 50\n\
                    payhook_apply_seconds_bucket{le=\"0.01\"} 98\n\
                    payhook_apply_seconds_bucket{le=\"0.1\"} 100\n\
                    payhook_apply_seconds_bucket{le=\"+Inf\"} 100\n\
                    payhook_apply_seconds_sum 0.5\n\
                    payhook_apply_seconds_count 100\n";
        let latency = latency_in(text, APPLY_SECONDS).unwrap();
        assert_eq!(latency.count, 100);
        assert_eq!(latency.p50_seconds, 0.001);
        assert_eq!(latency.p99_seconds, 0.1);
        assert!((latency.mean_seconds - 0.005).abs() < 1e-12);
        assert_eq!(latency_in("", APPLY_SECONDS), None);
    }

    /// A disk with room for so many bytes, then full until given more.
    struct Disk {
        written: Vec<u8>,
        room: usize,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "No space left on device",
                ));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_log_disk_loses_lines_but_never_glues_one_to_the_next() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let disk = Disk {
                written: Vec::new(),
                room: 30,
            };
            let mut log = LogFile::new(disk, format);
            log.write_all(b"first line\n").unwrap();
            // Cut short by the full disk, then refused whole.
            assert!(log
                .write_all(b"second line, longer than the room left\n")
                .is_err());
            assert!(log.write_all(b"third line\n").is_err());
            assert!(log.write_all(b"fourth line\n").is_err());
            log.file.room = 1 << 20;
            log.write_all(b"fifth line\n").unwrap();
            log.write_all(b"sixth line\n").unwrap();

            let written = String::from_utf8(log.file.written.clone()).unwrap();
            let lines: Vec<&str> = written.lines().collect();
            assert_eq!(lines.len(), 5, "{written}");
            assert_eq!(lines[0], "first line");
            assert_eq!(lines[1], "second line, longer");
            assert_eq!(&lines[3..], ["fifth line", "sixth line"]);
            let note = lines[2];
            match format {
                LogFormat::Text => {
                    assert!(note.contains(" WARN  payhook::telemetry log lines lost"));
                    assert!(
                        note.contains(" lost=3 error=\"No space left on device\""),
                        "{note}"
                    );
                }
                LogFormat::Json => {
                    let note: serde_json::Value = serde_json::from_str(note).unwrap();
                    assert_eq!(note["level"], "WARN");
                    assert_eq!(note["lost"], 3);
                    assert_eq!(note["error"], "No space left on device");
                }
            }
            assert!(written.ends_with('\n'));
        }
    }

    #[test]
    fn json_lines_keep_each_value_s_own_type() {
        let pairs: [(&str, Value); 7] = [
            ("order_no", Value::from("000123")),
            ("notification_id", Value::from("42")),
            ("amount", Value::from(420i64)),
            ("deliveries", Value::from(3u64)),
            ("duplicate", Value::from(true)),
            ("ratio", Value::from(1.5f64)),
            ("detail", Value::from_display(&"price 1.50")),
        ];
        let line = json_line(
            &log::Record::builder()
                .args(format_args!("notification"))
                .level(log::Level::Info)
                .target("payhook::notify")
                .key_values(&pairs)
                .build(),
            "2026-11-22T10:00:00.000Z".to_owned(),
        );
        assert_eq!(
            line,
            serde_json::json!({
                "ts": "2026-11-22T10:00:00.000Z",
                "level": "INFO",
                "target": "payhook::notify",
                "msg": "notification",
                "order_no": "000123",
                "notification_id": "42",
                "amount": 420,
                "deliveries": 3,
                "duplicate": true,
                "ratio": 1.5,
                "detail": "price 1.50",
            })
        );
    }
}

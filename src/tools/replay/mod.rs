//! `payhook replay`: sends recorded notifications to a payhook server and checks its answers. It
//! is also the load generator for benchmarks.
//!
//! # Fixture files
//!
//! A file holds JSON lines (blank lines skipped) or, when its first character is `[`, a JSON
//! array. Each item is one request: `{"channel", "headers": {...}, "body"}`, with optional
//! `name`, `expect` (`ack` or `retry`) and `provider`. A folder stands for its `.ndjson` and
//! `.json` files, in name order. An error names the file and the line (or array item).
//!
//! Each item is POSTed to `BASE_URL/notify/{channel}` with its headers and body as given. The
//! framing headers (`Host`, `Content-Length`, `Transfer-Encoding`, `Connection`) are left to the
//! client, which sets them for the body actually sent; it also adds `Accept: */*` when an item
//! has no `Accept`.
//!
//! # Which answer is which
//!
//! A transport error is a request that got no answer (refused, reset, timed out). 404 (no such
//! channel), 405 and 413 are HTTP errors: the request never reached a provider adapter. Any other
//! non-2xx status is a retry, as payhook answers every retry with 4xx or 5xx. A 2xx is an ack,
//! except for Alipay, whose protocol acks only with the exact body `success`.
//!
//! Which answer acks is the provider's to say ([`ProviderName::is_ack`]). An item's `provider`
//! field names its provider; without one, the provider is recognised from the body when the body
//! tells ([`ProviderName::recognise`]: a form with both `notify_id` and `sign` keys is Alipay's),
//! and every other item is judged by its status alone. Fixtures made by `payhook fixtures` always
//! carry `provider`.
//!
//! # As a load generator
//!
//! `--concurrency` tasks share one client (one connection pool, HTTP/1.1 keep-alive, no proxy,
//! no redirects) and take the next request from one precomputed send list until it is empty.
//! Each task counts answers and records latency (requests that got an answer, in microseconds)
//! in its own HDR histogram; nothing is logged per request. The progress bar is drawn only when
//! stdout is a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;
use serde::Serialize;

use crate::domain::ids::ChannelName;
use crate::notify::ProviderName;

mod fixture_file;

pub use fixture_file::{load, parse, Expect, Fixture, Located};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's base URL, e.g. http://127.0.0.1:8080; items go to BASE_URL/notify/{channel}.
    #[arg(long, value_name = "BASE_URL")]
    pub url: String,
    /// Requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Send every item K times (each round sends all items once, in file order).
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Shuffle the whole send list, repeats included.
    #[arg(long)]
    pub shuffle: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Stop sending after this many seconds even if the list is not done (for benchmarks).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: Option<u64>,
    /// Also write one JSON line per item to FILE: its name, how often it was sent and acked.
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
    /// Seconds before a request without an answer counts as a transport error.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Fixture files (.ndjson or .json) or folders of them.
    #[arg(required = true, value_name = "FILE_OR_DIR")]
    pub paths: Vec<PathBuf>,
}

/// How the server answered one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    Ack,
    Retry,
    HttpError,
    TransportError,
}

impl ReplyClass {
    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        match self {
            ReplyClass::Ack => "ack",
            ReplyClass::Retry => "retry",
            ReplyClass::HttpError => "HTTP error",
            ReplyClass::TransportError => "transport error",
        }
    }

    fn is(self, expect: Expect) -> bool {
        matches!(
            (self, expect),
            (ReplyClass::Ack, Expect::Ack) | (ReplyClass::Retry, Expect::Retry)
        )
    }
}

/// Classifies an HTTP answer; see the module doc. `provider` is the item's, when it is known.
pub fn classify(provider: Option<ProviderName>, status: u16, body: &[u8]) -> ReplyClass {
    let acked = match provider {
        Some(provider) => provider.is_ack(status, body),
        None => (200..=299).contains(&status),
    };
    match status {
        404 | 405 | 413 => ReplyClass::HttpError,
        _ if acked => ReplyClass::Ack,
        _ => ReplyClass::Retry,
    }
}

/// A fixture made ready to send: everything that can be checked is checked before the first
/// request.
struct Target {
    url: Url,
    headers: HeaderMap,
    body: Bytes,
    /// The item's provider: as its `provider` field says, or recognised from its body.
    provider: Option<ProviderName>,
    expect: Option<Expect>,
    label: String,
}

/// Headers the client sets itself, for the body it actually sends.
const FRAMING_HEADERS: [&str; 4] = ["host", "content-length", "transfer-encoding", "connection"];

impl Target {
    fn new(base: &str, located: Located) -> anyhow::Result<Target> {
        let Located { fixture, location } = located;
        let label = match &fixture.name {
            Some(name) => format!("{name} ({location})"),
            None => location,
        };
        let channel = ChannelName::parse(&fixture.channel).map_err(|e| anyhow!("{label}: {e}"))?;
        let url = Url::parse(&format!("{base}/notify/{channel}"))
            .with_context(|| format!("{label}: cannot build the notify URL"))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &fixture.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| anyhow!("{label}: header name {name:?} is not valid in HTTP"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| anyhow!("{label}: header {name}'s value is not valid in HTTP"))?;
            if !FRAMING_HEADERS.contains(&name.as_str()) {
                headers.insert(name, value);
            }
        }
        let provider = fixture
            .provider
            .or_else(|| ProviderName::recognise(&fixture.body));
        Ok(Target {
            url,
            headers,
            body: Bytes::from(fixture.body),
            provider,
            expect: fixture.expect,
            label,
        })
    }
}

/// `--url` without its trailing slash, refused unless plain HTTP without query or fragment.
fn base_url(text: &str) -> anyhow::Result<String> {
    let url = Url::parse(text).with_context(|| format!("--url {text:?} is not a URL"))?;
    match url.scheme() {
        "http" => {}
        "https" => bail!(
            "--url {text}: replay speaks plain HTTP (it is built without TLS); \
             point it at payhook's own listener"
        ),
        other => bail!("--url {text}: the scheme must be http, not {other}"),
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--url {text}: give the base URL only, without a query or fragment");
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A request that did not get the answer its item expects.
#[derive(Debug, Clone, Copy)]
struct Mismatch {
    item: u32,
    expected: Expect,
    answer: ReplyClass,
    status: Option<u16>,
}

/// What one sending task saw; merged at the end.
struct Tally {
    counts: [u64; 4],
    /// Microseconds, for requests that got an answer.
    latency: Histogram<u64>,
    mismatches: Vec<Mismatch>,
    first_transport_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            counts: [0; 4],
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            mismatches: Vec::new(),
            first_transport_error: None,
        }
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.latency
            .add(&other.latency)
            .map_err(|e| anyhow!("latency histogram: {e:?}"))?;
        self.mismatches.extend(other.mismatches);
        if self.first_transport_error.is_none() {
            self.first_transport_error = other.first_transport_error;
        }
        Ok(())
    }
}

/// The send list and everything the tasks share.
struct Plan {
    client: reqwest::Client,
    targets: Vec<Target>,
    /// Indexes into `targets`, in sending order.
    order: Vec<u32>,
    next: AtomicUsize,
    progress: ProgressBar,
    /// Sends and acks per item, for `--results`.
    sends: Vec<AtomicU32>,
    acks: Vec<AtomicU32>,
    /// When `--duration` runs out.
    deadline: Option<Instant>,
}

async fn send_all(plan: Arc<Plan>, concurrency: usize) -> anyhow::Result<Tally> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(plan.order.len()) {
        tasks.spawn(sender(plan.clone()));
    }
    let mut total = Tally::new();
    while let Some(done) = tasks.join_next().await {
        total.merge(done.context("a sending task failed")?)?;
    }
    Ok(total)
}

async fn sender(plan: Arc<Plan>) -> Tally {
    let mut tally = Tally::new();
    loop {
        if plan.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let slot = plan.next.fetch_add(1, Ordering::Relaxed);
        let Some(&item) = plan.order.get(slot) else {
            break;
        };
        let target = &plan.targets[item as usize];
        let started = Instant::now();
        let sent = plan
            .client
            .post(target.url.clone())
            .headers(target.headers.clone())
            .body(target.body.clone())
            .send()
            .await;
        let answered = match sent {
            // The body is always read: Alipay's ack is in it, and a connection goes back to the
            // pool only once its response is read to the end.
            Ok(response) => {
                let status = response.status().as_u16();
                response.bytes().await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        let (answer, status) = match answered {
            Ok((status, body)) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(micros);
                (classify(target.provider, status, &body), Some(status))
            }
            Err(e) => {
                if tally.first_transport_error.is_none() {
                    tally.first_transport_error = Some(error_chain(&e));
                }
                (ReplyClass::TransportError, None)
            }
        };
        tally.counts[answer.index()] += 1;
        plan.sends[item as usize].fetch_add(1, Ordering::Relaxed);
        if answer == ReplyClass::Ack {
            plan.acks[item as usize].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(expected) = target.expect.filter(|e| !answer.is(*e)) {
            tally.mismatches.push(Mismatch {
                item,
                expected,
                answer,
                status,
            });
        }
        plan.progress.inc(1);
    }
    tally
}

/// An error with its causes, which is where reqwest keeps "Connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let words = cause.to_string();
        if !text.contains(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        source = cause.source();
    }
    text
}

/// Counts by answer.
#[derive(Debug, Serialize)]
struct Counts {
    ack: u64,
    retry: u64,
    http_error: u64,
    transport_error: u64,
}

/// Milliseconds.
#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct MismatchView {
    item: String,
    expected: Expect,
    got: &'static str,
    status: Option<u16>,
}

/// What `--json` prints, and the text summary is made from.
#[derive(Debug, Serialize)]
struct Summary {
    url: String,
    items: usize,
    repeat: u32,
    requests: u64,
    concurrency: u16,
    elapsed_secs: f64,
    requests_per_sec: f64,
    answers: Counts,
    latency_ms: Option<Latency>,
    items_with_expect: usize,
    mismatched_items: usize,
    /// The first few, in item order.
    mismatches: Vec<MismatchView>,
    first_transport_error: Option<String>,
}

/// How many mismatched items the summary names.
const MISMATCHES_SHOWN: usize = 10;

impl Summary {
    fn new(args: &Args, plan: &Plan, mut tally: Tally, elapsed: Duration) -> Summary {
        let requests: u64 = tally.counts.iter().sum();
        let secs = elapsed.as_secs_f64();
        let ms = |micros: u64| micros as f64 / 1000.0;
        let latency = (!tally.latency.is_empty()).then(|| Latency {
            p50: ms(tally.latency.value_at_quantile(0.50)),
            p95: ms(tally.latency.value_at_quantile(0.95)),
            p99: ms(tally.latency.value_at_quantile(0.99)),
            max: ms(tally.latency.max()),
        });
        tally.mismatches.sort_by_key(|m| m.item);
        tally.mismatches.dedup_by_key(|m| m.item);
        let count = |answer: ReplyClass| tally.counts[answer.index()];
        Summary {
            url: args.url.clone(),
            items: plan.targets.len(),
            repeat: args.repeat,
            requests,
            concurrency: args.concurrency,
            elapsed_secs: secs,
            requests_per_sec: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            answers: Counts {
                ack: count(ReplyClass::Ack),
                retry: count(ReplyClass::Retry),
                http_error: count(ReplyClass::HttpError),
                transport_error: count(ReplyClass::TransportError),
            },
            latency_ms: latency,
            items_with_expect: plan.targets.iter().filter(|t| t.expect.is_some()).count(),
            mismatched_items: tally.mismatches.len(),
            mismatches: tally
                .mismatches
                .iter()
                .take(MISMATCHES_SHOWN)
                .map(|m| MismatchView {
                    item: plan.targets[m.item as usize].label.clone(),
                    expected: m.expected,
                    got: m.answer.as_str(),
                    status: m.status,
                })
                .collect(),
            first_transport_error: tally.first_transport_error,
        }
    }

    fn text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sent {} requests ({} items x {}) to {} in {:.2} s: {:.1} requests/s at concurrency {}",
            self.requests,
            self.items,
            self.repeat,
            self.url,
            self.elapsed_secs,
            self.requests_per_sec,
            self.concurrency
        );
        let a = &self.answers;
        let _ = writeln!(
            out,
            "answers: {} ack, {} retry, {} HTTP error, {} transport error",
            a.ack, a.retry, a.http_error, a.transport_error
        );
        match &self.latency_ms {
            Some(l) => {
                let _ = writeln!(
                    out,
                    "latency: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    l.p50, l.p95, l.p99, l.max
                );
            }
            None => out.push_str("latency: no request was answered\n"),
        }
        if let Some(e) = &self.first_transport_error {
            let _ = writeln!(out, "first transport error: {e}");
        }
        if self.items_with_expect == 0 {
            out.push_str("expect: no item states an expected answer\n");
        } else if self.mismatched_items == 0 {
            let _ = writeln!(
                out,
                "expect: all {} items that state an answer got it",
                self.items_with_expect
            );
        } else {
            let _ = writeln!(
                out,
                "expect: {} of {} items got another answer than expected:",
                self.mismatched_items, self.items_with_expect
            );
            for m in &self.mismatches {
                let status = m.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {}: expected {}, got {}{status}",
                    m.item,
                    m.expected.as_str(),
                    m.got
                );
            }
            if self.mismatched_items > self.mismatches.len() {
                let _ = writeln!(
                    out,
                    "  ... and {} more",
                    self.mismatched_items - self.mismatches.len()
                );
            }
        }
        out
    }
}

/// Most requests one run may send; the send list is kept in memory.
const MAX_REQUESTS: usize = 100_000_000;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let base = base_url(&args.url)?;
    let fixtures = load(&args.paths)?;
    if fixtures.is_empty() {
        bail!("the fixture files hold no items");
    }
    let targets = fixtures
        .into_iter()
        .map(|located| Target::new(&base, located))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let requests = targets
        .len()
        .checked_mul(args.repeat as usize)
        .filter(|n| *n <= MAX_REQUESTS)
        .ok_or_else(|| {
            anyhow!(
                "--repeat {}: more than {MAX_REQUESTS} requests",
                args.repeat
            )
        })?;
    let items = u32::try_from(targets.len()).context("too many items")?;
    let mut order: Vec<u32> = Vec::with_capacity(requests);
    for _ in 0..args.repeat {
        order.extend(0..items);
    }
    if args.shuffle {
        fastrand::shuffle(&mut order);
    }
    let progress = if std::io::stdout().is_terminal() {
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        ProgressBar::new(requests as u64).with_style(style)
    } else {
        ProgressBar::hidden()
    };
    let concurrency = usize::from(args.concurrency);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(args.timeout))
        .build()
        .context("cannot build the HTTP client")?;
    let plan = Arc::new(Plan {
        client,
        targets,
        order,
        next: AtomicUsize::new(0),
        progress,
        sends: (0..items).map(|_| AtomicU32::new(0)).collect(),
        acks: (0..items).map(|_| AtomicU32::new(0)).collect(),
        deadline: args
            .duration
            .map(|secs| Instant::now() + Duration::from_secs(secs)),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = Instant::now();
    let tally = runtime.block_on(send_all(plan.clone(), concurrency))?;
    let elapsed = started.elapsed();
    plan.progress.finish_and_clear();
    if let Some(path) = &args.results {
        write_results(path, &plan)?;
    }
    let summary = Summary::new(&args, &plan, tally, elapsed);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.text());
    }
    Ok(if summary.mismatched_items > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One line per item: which it was, how often it was sent, and how often it was acked.
fn write_results(path: &Path, plan: &Plan) -> anyhow::Result<()> {
    use std::io::Write;
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot write results to {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for ((target, sends), acks) in plan.targets.iter().zip(&plan.sends).zip(&plan.acks) {
        let line = serde_json::json!({
            "item": target.label,
            "sent": sends.load(Ordering::Relaxed),
            "acks": acks.load(Ordering::Relaxed),
        });
        writeln!(out, "{line}")?;
    }
    out.flush()
        .with_context(|| format!("cannot write results to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRIPE: &str = r#"{"channel": "stripe", "headers": {"Stripe-Signature": "t=1,v1=00"}, "body": "{\"id\": \"evt_1\"}", "expect": "ack"}"#;
    const ALIPAY: &str = r#"{"name": "paid", "channel": "alipay", "body": "notify_id=N1&sign=abc%3D&total_amount=1.00", "expect": "retry"}"#;

    #[test]
    fn answers_follow_each_provider_protocol() {
        let alipay = Some(ProviderName::Alipay);
        let cases: [(Option<ProviderName>, u16, &[u8], ReplyClass); 14] = [
            (None, 200, b"", ReplyClass::Ack),
            (None, 204, b"", ReplyClass::Ack),
            (None, 200, b"fail", ReplyClass::Ack),
            (Some(ProviderName::Stripe), 200, b"fail", ReplyClass::Ack),
            (Some(ProviderName::WechatPay), 204, b"", ReplyClass::Ack),
            (alipay, 200, b"success", ReplyClass::Ack),
            (alipay, 200, b"fail", ReplyClass::Retry),
            (alipay, 200, b"success\n", ReplyClass::Retry),
            (alipay, 500, b"success", ReplyClass::Retry),
            (None, 400, b"", ReplyClass::Retry),
            (
                Some(ProviderName::StandardWebhooks),
                401,
                b"",
                ReplyClass::Retry,
            ),
            (None, 503, b"", ReplyClass::Retry),
            (alipay, 404, b"unknown channel", ReplyClass::HttpError),
            (None, 413, b"", ReplyClass::HttpError),
        ];
        for (provider, status, body, answer) in cases {
            assert_eq!(
                classify(provider, status, body),
                answer,
                "provider={provider:?} status={status} body={:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(classify(None, 405, b""), ReplyClass::HttpError);
        assert_eq!(classify(None, 302, b""), ReplyClass::Retry);
        assert!(ReplyClass::Ack.is(Expect::Ack) && ReplyClass::Retry.is(Expect::Retry));
        assert!(!ReplyClass::TransportError.is(Expect::Retry));
        assert!(!ReplyClass::HttpError.is(Expect::Retry));
    }

    #[test]
    fn alipay_is_told_by_the_provider_field_or_else_by_its_form() {
        let base = "http://127.0.0.1:1";
        let provider = |located: &Located| Target::new(base, located.clone()).unwrap().provider;
        let mut located = parse(ALIPAY, "a").unwrap().remove(0);
        assert_eq!(provider(&located), Some(ProviderName::Alipay));
        located.fixture.provider = Some(ProviderName::Stripe);
        assert_eq!(provider(&located), Some(ProviderName::Stripe));
        located.fixture.body = "{}".to_owned();
        located.fixture.provider = Some(ProviderName::Alipay);
        assert_eq!(provider(&located), Some(ProviderName::Alipay));
        located.fixture.provider = None;
        assert_eq!(provider(&located), None);
    }

    #[test]
    fn targets_are_checked_before_anything_is_sent() {
        let base = base_url("http://127.0.0.1:8080/").unwrap();
        assert_eq!(base, "http://127.0.0.1:8080");
        let target = Target::new(&base, parse(STRIPE, "s").unwrap().remove(0)).unwrap();
        assert_eq!(target.url.as_str(), "http://127.0.0.1:8080/notify/stripe");
        assert_eq!(target.label, "s:1");
        let named = Target::new(&base, parse(ALIPAY, "a").unwrap().remove(0)).unwrap();
        assert_eq!(named.label, "paid (a:1)");

        let mut bad = parse(STRIPE, "s").unwrap().remove(0);
        bad.fixture.channel = "../api".to_owned();
        let error = Target::new(&base, bad.clone()).err().unwrap().to_string();
        assert!(error.starts_with("s:1: channel"), "{error}");
        bad.fixture.channel = "stripe".to_owned();
        bad.fixture.headers.insert("bad header".into(), "x".into());
        let error = Target::new(&base, bad).err().unwrap().to_string();
        assert!(error.contains("bad header"), "{error}");

        let mut framed = parse(STRIPE, "s").unwrap().remove(0);
        framed
            .fixture
            .headers
            .insert("Content-Length".into(), "999".into());
        let target = Target::new(&base, framed).unwrap();
        assert!(target.headers.get("content-length").is_none());
        assert!(target.headers.get("stripe-signature").is_some());

        for url in [
            "https://example.com",
            "ftp://x",
            "http://x/?a=1",
            "nonsense",
        ] {
            assert!(base_url(url).is_err(), "{url}");
        }
        assert_eq!(base_url("http://h:1/prefix/").unwrap(), "http://h:1/prefix");
    }
}

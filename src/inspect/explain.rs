//! Explaining a stored notification: its request verified again with the channel's current
//! keys, and what was tried, key by key, with the bytes the signature covers, the timestamp's
//! skew and the known traps.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

use super::error::InspectError;
use super::traps::{self, Trap};
use crate::books::inbox::{self, InboxEntry, Source};
use crate::config::ChannelConfig;
use crate::db::DbConnection;
use crate::domain::ids::ChannelName;
use crate::domain::notification::Notification;
use crate::notify::{self, Examination, KeyCheck, RawRequest, Rejection};

/// The channels as configured now (a [`crate::config::Settings`]' `channels`): what stored
/// notifications are verified with again.
pub type Channels = BTreeMap<ChannelName, ChannelConfig>;

/// A stored notification with the headers and bytes it arrived with.
#[derive(Debug, Clone)]
pub struct Stored {
    pub entry: InboxEntry,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Stored {
    /// The inbox row `id` and its evidence. Only notifications qualify: answers to payhook's
    /// own queries are verified as answers when they come.
    pub fn load(conn: &mut DbConnection, id: i64) -> Result<Stored, InspectError> {
        let listed = inbox::by_id(conn, id, true)?.ok_or(InspectError::NotFound(id))?;
        let entry = listed.notification;
        if entry.source != Source::Notify.as_str() {
            return Err(InspectError::NotANotification {
                id,
                origin: entry.source,
            });
        }
        let (headers_json, body) = listed.raw.unwrap_or_default();
        // The headers are stored as a JSON object of strings.
        let headers =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&headers_json)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(name, value)| Some((name, value.as_str()?.to_owned())))
                .collect();
        Ok(Stored {
            entry,
            headers,
            body,
        })
    }

    /// The request as it arrived, as far as it was kept.
    pub fn request(&self) -> RawRequest<'_> {
        RawRequest {
            headers: &self.headers,
            body: &self.body,
        }
    }

    /// The headers as stored, a JSON object: the evidence a notification applied from this row
    /// keeps.
    pub(super) fn headers_json(&self) -> String {
        let object: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.as_str().into()))
            .collect();
        serde_json::Value::Object(object).to_string()
    }

    /// When the request first arrived: the instant its freshness is judged at.
    pub fn first_seen(&self) -> DateTime<Utc> {
        self.entry.first_seen_at.and_utc()
    }
}

/// Why a stored notification verifies now, or why not.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The inbox row.
    pub id: i64,
    pub channel: String,
    /// `alipay`, `wechatpay`, `stripe` or `standard-webhooks`; `None` when the channel is no
    /// longer configured.
    pub provider: Option<&'static str>,
    /// The provider's notification id, or `unverified:<digest of the body>` for a request that
    /// was rejected when it arrived.
    pub notification_id: String,
    pub first_seen_at: NaiveDateTime,
    /// What the row says became of it when it arrived.
    pub was_verified: bool,
    pub was_rejected_because: Option<String>,
    pub stored_outcome: String,
    /// Whether it verifies now, with the channel's current keys, its freshness judged as of
    /// `first_seen_at`: exactly what [`super::reapply`] requires.
    pub verifies: bool,
    /// Why it does not verify now.
    pub rejection: Option<String>,
    /// The configured key the signature verifies with, by name (`alipay_public_key`, a WeChat
    /// Pay serial, `secrets[1]`); never the key.
    pub verified_by: Option<String>,
    /// Every configured key the signature was checked with.
    pub keys: Vec<KeyTried>,
    /// Why no key could be tried, or why one that verifies does not count (an unknown serial).
    pub problem: Option<String>,
    /// The exact bytes the signature covers, escaped and cut for showing: Alipay's sorted
    /// `k=v&...` content, WeChat Pay's `ts\nnonce\nbody\n`, Stripe's `t.body`, Standard
    /// Webhooks' `id.ts.body`.
    pub signed_content: Option<Shown>,
    /// The signed timestamp against the request's first arrival, for providers that sign one.
    pub timestamp: Option<Skew>,
    pub traps: Vec<Trap>,
}

/// One configured key and what it said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyTried {
    /// Its name in the configuration, never its value.
    pub key: String,
    /// Whether the request's own choice of key allows it (WeChat Pay's serial); other providers
    /// try every key.
    pub chosen: bool,
    pub verified: bool,
    pub why_not: Option<String>,
}

impl From<&KeyCheck> for KeyTried {
    fn from(check: &KeyCheck) -> KeyTried {
        KeyTried {
            key: check.key.clone(),
            chosen: check.chosen,
            verified: check.result.is_ok(),
            why_not: check
                .result
                .as_ref()
                .err()
                .map(|rejection| match rejection {
                    Rejection::Signature(why) | Rejection::Format(why) => why.clone(),
                }),
        }
    }
}

/// A signed timestamp against the moment its request first arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skew {
    /// Unix seconds, when the signed timestamp is a number.
    pub signed_at: Option<i64>,
    /// Unix seconds.
    pub first_seen_at: i64,
    /// `first_seen_at - signed_at`: positive when it arrived after it was signed.
    pub skew_secs: Option<i64>,
    pub tolerance_secs: u64,
    /// Whether a timestamp ahead of the clock is held to the tolerance too.
    pub both_ways: bool,
    /// Why the timestamp was already out of tolerance when the request first arrived.
    pub stale: Option<String>,
}

/// Untrusted bytes made safe to show: every character that is not printable (control
/// characters, bidirectional overrides, invalid UTF-8) escaped, `\` doubled, and cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shown {
    pub text: String,
    /// The length of the whole, in bytes.
    pub bytes: usize,
    /// Whether `text` shows only the start.
    pub cut: bool,
}

/// How much of the signed content is shown: enough for any real notification's form or
/// headers, not a flood for a hostile one.
const SHOWN_CHARS: usize = 4096;

impl Shown {
    pub fn of(bytes: &[u8]) -> Shown {
        let mut text = String::new();
        let mut shown_chars = 0;
        let mut cut = false;
        'chunks: for chunk in bytes.utf8_chunks() {
            let valid = chunk.valid().chars().map(escape_char);
            let invalid = chunk.invalid().iter().map(|b| format!("\\x{b:02x}"));
            for piece in valid.chain(invalid) {
                if shown_chars == SHOWN_CHARS {
                    cut = true;
                    break 'chunks;
                }
                text.push_str(&piece);
                shown_chars += 1;
            }
        }
        Shown {
            text,
            bytes: bytes.len(),
            cut,
        }
    }
}

/// A character as shown: itself when printable, else its Rust escape (`\n`, `\u{1b}`).
fn escape_char(c: char) -> String {
    match c {
        '\\' => "\\\\".to_owned(),
        '"' | '\'' => c.to_string(),
        c if c.escape_debug().nth(1).is_some() => c.escape_debug().to_string(),
        c => c.to_string(),
    }
}

/// Explains the stored notification `id` (see [`Explanation`]).
pub fn explain(
    conn: &mut DbConnection,
    channels: &Channels,
    id: i64,
) -> Result<Explanation, InspectError> {
    Ok(explain_stored(&Stored::load(conn, id)?, channels))
}

/// Explains a stored notification already read.
pub fn explain_stored(stored: &Stored, channels: &Channels) -> Explanation {
    examine_stored(stored, channels).0
}

/// Verifies a stored request again, with the channel's current keys and its freshness judged
/// as of its first arrival, and explains the result; the notification, when it verifies.
pub(super) fn examine_stored(
    stored: &Stored,
    channels: &Channels,
) -> (Explanation, Option<Notification>) {
    let entry = &stored.entry;
    let mut explanation = Explanation {
        id: entry.id,
        channel: entry.channel.clone(),
        provider: None,
        notification_id: entry.notification_id.clone(),
        first_seen_at: entry.first_seen_at,
        was_verified: entry.verified,
        was_rejected_because: entry.verify_error.clone(),
        stored_outcome: entry.outcome.clone(),
        verifies: false,
        rejection: None,
        verified_by: None,
        keys: Vec::new(),
        problem: None,
        signed_content: None,
        timestamp: None,
        traps: Vec::new(),
    };
    let configured = ChannelName::parse(&entry.channel)
        .ok()
        .and_then(|name| channels.get_key_value(&name));
    let Some((channel, cfg)) = configured else {
        explanation.rejection = Some(format!(
            "channel {} is not configured",
            notify::shown(&entry.channel)
        ));
        log_explained(&explanation);
        return (explanation, None);
    };
    explanation.provider = Some(provider_name(cfg));
    let request = stored.request();
    let built = notify::from_config(cfg).and_then(|provider| {
        let examination = notify::examine(cfg, &request)?;
        Ok((provider, examination))
    });
    let (provider, examination) = match built {
        Ok(built) => built,
        Err(e) => {
            explanation.rejection = Some(format!("the channel's keys do not load: {e}"));
            log_explained(&explanation);
            return (explanation, None);
        }
    };
    let verified = notify::verify(provider.as_ref(), channel, &request, stored.first_seen());
    explanation.verifies = verified.is_ok();
    explanation.rejection = verified.as_ref().err().map(ToString::to_string);
    fill_in(&mut explanation, stored, &examination);
    explanation.traps = traps::detect(&entry.notification_id, &request, cfg, &examination);
    log_explained(&explanation);
    (explanation, verified.ok())
}

/// What the adapter's examination found.
fn fill_in(explanation: &mut Explanation, stored: &Stored, examination: &Examination) {
    explanation.verified_by = examination.verified_by().map(str::to_owned);
    explanation.keys = examination.keys.iter().map(KeyTried::from).collect();
    explanation.problem = examination.problem.as_ref().map(ToString::to_string);
    explanation.signed_content = examination.signed_content.as_deref().map(Shown::of);
    explanation.timestamp = examination.freshness.as_ref().map(|freshness| {
        let first_seen = stored.first_seen();
        let signed_at = freshness.signed_at();
        Skew {
            signed_at,
            first_seen_at: first_seen.timestamp(),
            skew_secs: signed_at.map(|at| first_seen.timestamp().saturating_sub(at)),
            tolerance_secs: freshness.tolerance_secs,
            both_ways: freshness.both_ways(),
            stale: freshness.check(first_seen).err().map(|e| e.to_string()),
        }
    });
}

fn provider_name(cfg: &ChannelConfig) -> &'static str {
    match cfg {
        ChannelConfig::Alipay(_) => "alipay",
        ChannelConfig::WechatPay(_) => "wechatpay",
        ChannelConfig::Stripe(_) => "stripe",
        ChannelConfig::StandardWebhooks(_) => "standard-webhooks",
    }
}

/// One log line of what was tried: keys by name and what each said, the traps found; never a
/// key, a secret, a signature or the untrusted content.
fn log_explained(e: &Explanation) {
    let keys: Vec<String> = e
        .keys
        .iter()
        .map(|k| {
            let said = if k.verified { "verifies" } else { "fails" };
            let chosen = if k.chosen { "" } else { " (not chosen)" };
            format!("{}: {said}{chosen}", k.key)
        })
        .collect();
    let traps: Vec<String> = e
        .traps
        .iter()
        .map(|t| {
            let how = if t.confirmed {
                "confirmed"
            } else {
                "suspected"
            };
            format!("{} ({how})", t.trap.as_str())
        })
        .collect();
    log::info!(
        target: "payhook::inspect",
        id = e.id,
        channel = e.channel.as_str(),
        provider = e.provider.unwrap_or("-"),
        notification_id = e.notification_id.as_str(),
        verifies = e.verifies,
        verified_by = e.verified_by.as_deref().unwrap_or("-"),
        keys = keys.join(", ").as_str(),
        problem = e.problem.as_deref().unwrap_or(""),
        rejection = e.rejection.as_deref().unwrap_or(""),
        skew_secs = e.timestamp.as_ref().and_then(|t| t.skew_secs).unwrap_or(0),
        signed_bytes = e.signed_content.as_ref().map_or(0, |s| s.bytes),
        traps = traps.join(", ").as_str();
        "explained"
    );
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "notification {} on channel {} ({}), first seen {} UTC",
            self.id,
            self.channel,
            self.provider.unwrap_or("not configured"),
            self.first_seen_at.format("%Y-%m-%d %H:%M:%S")
        )?;
        writeln!(
            f,
            "  notification id: {}",
            Shown::of(self.notification_id.as_bytes()).text
        )?;
        match (&self.was_rejected_because, self.was_verified) {
            (Some(why), false) => writeln!(f, "  when it arrived: rejected: {why}")?,
            _ => writeln!(f, "  when it arrived: verified, {}", self.stored_outcome)?,
        }
        match &self.rejection {
            None => writeln!(f, "  now: verifies")?,
            Some(why) => writeln!(f, "  now: does not verify: {why}")?,
        }
        if let Some(problem) = &self.problem {
            writeln!(f, "  problem: {problem}")?;
        }
        if !self.keys.is_empty() {
            writeln!(f, "keys tried:")?;
        }
        for key in &self.keys {
            let chosen = if key.chosen {
                ""
            } else {
                " (not the key the request names)"
            };
            match &key.why_not {
                None => writeln!(f, "  {}: verifies{chosen}", key.key)?,
                Some(why) => writeln!(f, "  {}: does not verify: {why}{chosen}", key.key)?,
            }
        }
        if let Some(skew) = &self.timestamp {
            write!(f, "timestamp: ")?;
            match (skew.signed_at, skew.skew_secs) {
                (Some(at), Some(later)) if later >= 0 => {
                    write!(f, "signed at {at}, first seen {later} s later")?
                }
                (Some(at), Some(earlier)) => write!(
                    f,
                    "signed at {at}, first seen {} s before (the sender's clock is ahead)",
                    earlier.unsigned_abs()
                )?,
                _ => write!(f, "not unix seconds")?,
            }
            let ways = if skew.both_ways { "either way" } else { "old" };
            write!(f, "; tolerance {} s ({ways})", skew.tolerance_secs)?;
            match &skew.stale {
                None => writeln!(f, "; within it when it arrived")?,
                Some(why) => writeln!(f, "; out of it when it arrived: {why}")?,
            }
        }
        if let Some(content) = &self.signed_content {
            let cut = if content.cut { ", the start of it" } else { "" };
            writeln!(f, "signed content ({} bytes{cut}, escaped):", content.bytes)?;
            writeln!(f, "  {}", content.text)?;
        }
        if !self.traps.is_empty() {
            writeln!(f, "known traps:")?;
        }
        for trap in &self.traps {
            let how = if trap.confirmed { "found" } else { "suspected" };
            writeln!(f, "  [{how}] {}: {}", trap.trap.as_str(), trap.detail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_bytes_are_shown_escaped_and_cut() {
        let shown = Shown::of("a=\"1\"\n\u{1b}[31m\u{202e}充值\\\r".as_bytes());
        assert_eq!(shown.text, "a=\"1\"\\n\\u{1b}[31m\\u{202e}充值\\\\\\r");
        assert!(!shown.cut);
        let shown = Shown::of(&[b'x', 0xb3, 0xe4, b'y']);
        assert_eq!(shown.text, "x\\xb3\\xe4y");
        let long = vec![b'a'; SHOWN_CHARS + 10];
        let shown = Shown::of(&long);
        assert!(shown.cut);
        assert_eq!(shown.text.len(), SHOWN_CHARS);
        assert_eq!(shown.bytes, SHOWN_CHARS + 10);
    }
}

//! Fixture files as the module above describes them: JSON lines or a JSON array of recorded
//! requests, a folder standing for its fixture files; errors name the file and the line or item.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use crate::notify::ProviderName;

/// The answer an item is expected to get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Ack,
    Retry,
}

impl Expect {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Expect::Ack => "ack",
            Expect::Retry => "retry",
        }
    }
}

/// One recorded request, as a fixture file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The raw body, byte for byte.
    pub body: String,
}

/// A fixture and where it was read: `FILE:LINE` or `FILE item N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub fixture: Fixture,
    pub location: String,
}

/// Parses one fixture file's text; `source` names it in errors and locations.
pub fn parse(text: &str, source: &str) -> anyhow::Result<Vec<Located>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| anyhow!("{source}:{}:{}: {}", e.line(), e.column(), bare(&e)))?;
        return items
            .into_iter()
            .enumerate()
            .map(|(i, value)| {
                let location = format!("{source} item {}", i + 1);
                match serde_json::from_value(value) {
                    Ok(fixture) => Ok(Located { fixture, location }),
                    Err(e) => Err(anyhow!("{location}: {}", bare(&e))),
                }
            })
            .collect();
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            let location = format!("{source}:{}", n + 1);
            match serde_json::from_str(line) {
                Ok(fixture) => Ok(Located { fixture, location }),
                Err(e) => Err(anyhow!("{location}:{}: {}", e.column(), bare(&e))),
            }
        })
        .collect()
}

/// serde_json's message without its own " at line L column C", which would count from the start
/// of the line or item rather than the file.
fn bare(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// Reads every fixture the command line names; a folder stands for its fixture files.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<Located>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read folder {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_fixture_file(p))
                .collect();
            if found.is_empty() {
                bail!(
                    "{}: no .ndjson or .json files in this folder",
                    path.display()
                );
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        all.extend(parse(&text, &file.display().to_string())?);
    }
    Ok(all)
}

fn is_fixture_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("ndjson" | "json")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRIPE: &str = r#"{"channel": "stripe", "headers": {"Stripe-Signature": "t=1,v1=00"}, "body": "{\"id\": \"evt_1\"}", "expect": "ack"}"#;
    const ALIPAY: &str = r#"{"name": "paid", "channel": "alipay", "body": "notify_id=N1&sign=abc%3D&total_amount=1.00", "expect": "retry"}"#;

    #[test]
    fn json_lines_and_json_arrays_read_alike() {
        let lines = format!("{STRIPE}\n\n{ALIPAY}\n");
        let from_lines = parse(&lines, "a.ndjson").unwrap();
        assert_eq!(from_lines.len(), 2);
        assert_eq!(from_lines[0].location, "a.ndjson:1");
        assert_eq!(from_lines[1].location, "a.ndjson:3");
        let array = format!("\u{feff} [\n{STRIPE},\n{ALIPAY}\n]");
        let from_array = parse(&array, "a.json").unwrap();
        assert_eq!(from_array[1].location, "a.json item 2");
        for (a, b) in from_lines.iter().zip(&from_array) {
            assert_eq!(a.fixture, b.fixture);
        }
        let stripe = &from_lines[0].fixture;
        assert_eq!(stripe.channel, "stripe");
        assert_eq!(stripe.body, r#"{"id": "evt_1"}"#);
        assert_eq!(stripe.headers["Stripe-Signature"], "t=1,v1=00");
        assert_eq!(stripe.expect, Some(Expect::Ack));
        assert_eq!(from_lines[1].fixture.name.as_deref(), Some("paid"));
        assert_eq!(from_lines[1].fixture.expect, Some(Expect::Retry));
    }

    #[test]
    fn a_bad_line_or_item_is_named_in_the_error() {
        let missing_body = r#"{"channel": "stripe"}"#;
        let text = format!("{STRIPE}\n{STRIPE}\n{missing_body}\n");
        let error = parse(&text, "f.ndjson").unwrap_err().to_string();
        assert!(error.starts_with("f.ndjson:3:"), "{error}");
        assert!(error.contains("body"), "{error}");
        assert!(!error.contains("at line 1"), "{error}");

        let broken = format!("{STRIPE}\n{{\"channel\": \n");
        let error = parse(&broken, "f.ndjson").unwrap_err().to_string();
        assert!(error.starts_with("f.ndjson:2:"), "{error}");

        let typo = STRIPE.replace("\"expect\": \"ack\"", "\"expect\": \"acked\"");
        let error = parse(&format!("[{STRIPE}, {typo}]"), "f.json")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("f.json item 2: "), "{error}");
        assert!(error.contains("acked"), "{error}");

        let unknown = STRIPE.replace("\"expect\"", "\"expcet\"");
        let error = parse(&unknown, "f.ndjson").unwrap_err().to_string();
        assert!(error.contains("expcet"), "{error}");

        let error = parse("[1, 2", "f.json").unwrap_err().to_string();
        assert!(error.starts_with("f.json:1:"), "{error}");
    }

    #[test]
    fn a_folder_stands_for_its_fixture_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.ndjson"), format!("{ALIPAY}\n")).unwrap();
        std::fs::write(dir.path().join("a.json"), format!("[{STRIPE}]")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a fixture").unwrap();
        let loaded = load(&[dir.path().to_path_buf()]).unwrap();
        let channels: Vec<&str> = loaded.iter().map(|l| l.fixture.channel.as_str()).collect();
        assert_eq!(channels, ["stripe", "alipay"]);

        let empty = tempfile::tempdir().unwrap();
        let error = load(&[empty.path().to_path_buf()]).unwrap_err().to_string();
        assert!(error.contains("no .ndjson or .json files"), "{error}");
        let error = load(&[dir.path().join("missing.ndjson")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing.ndjson"), "{error}");
    }
}

//! Settings, layered: built-in defaults (`config/default.toml`, compiled in), then the config
//! file, then `PAYHOOK_*` environment variables, then command-line flags.
//!
//! The layers are merged as TOML tables and deserialized once, so an error names the full key
//! (`channels.alipay: unknown field app_idd`) whichever layer it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod channels;

pub use channels::{
    AlipayConfig, AlipaySignType, ChannelConfig, ChannelTerms, Secret, StandardWebhooksConfig,
    StripeConfig, WechatPayConfig,
};

use crate::domain::ids::ChannelName;

/// The built-in defaults, documented key by key.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub bind: String,
    pub database_url: Secret,
    pub admin_token: Option<Secret>,
    pub pool: PoolSettings,
    pub http: HttpSettings,
    pub commit: CommitSettings,
    pub recovery: RecoverySettings,
    pub inbox: InboxSettings,
    #[serde(default)]
    pub channels: BTreeMap<ChannelName, ChannelConfig>,
}

/// Asking providers about orders whose notification never came, and closing what expires.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverySettings {
    /// For every channel that has the keys to ask its provider.
    pub enabled: bool,
    pub first_query_after_secs: u64,
    pub max_interval_secs: u64,
    pub expire_after_secs: u64,
}

/// What the inbox keeps of requests that fail verification.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxSettings {
    /// Most rejected requests kept per channel: the newest; older ones are deleted as new ones
    /// arrive (see [`crate::books::inbox::prune_rejected`]).
    pub keep_rejected: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    pub max_size: u32,
    pub connection_timeout_secs: u64,
    pub test_on_checkout: bool,
    pub lock_timeout_secs: u64,
    pub statement_timeout_secs: u64,
    pub rejection_max_size: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub body_limit_bytes: usize,
    pub request_timeout_secs: u64,
    pub workers: usize,
    pub shutdown_timeout_secs: u64,
}

/// How notifications share transactions (see [`crate::crediting::committer`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitSettings {
    pub writers: usize,
    pub max_batch: usize,
    pub timeout_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {error}")]
    Syntax { path: PathBuf, error: SyntaxError },
    #[error("config: {0}")]
    Invalid(String),
}

/// Where a config text stops being TOML. It never holds the text there, which may be a secret:
/// toml's own message shows the offending line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Line and column, from 1.
    pub at: Option<(usize, usize)>,
    /// The key written at the start of the offending line, when there is one.
    pub key: Option<String>,
    /// toml's description, left out when it quotes the line.
    pub message: Option<String>,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "line {line}, column {column}")?,
            None => f.write_str("position unknown")?,
        }
        if let Some(key) = &self.key {
            write!(f, ", key {key}")?;
        }
        match &self.message {
            Some(message) => write!(f, ": {message}"),
            None => Ok(()),
        }
    }
}

impl SyntaxError {
    fn new(text: &str, error: &toml::de::Error) -> SyntaxError {
        let Some(offset) = error.span().map(|span| span.start.min(text.len())) else {
            return SyntaxError {
                at: None,
                key: None,
                message: None,
            };
        };
        let offset = (0..=offset)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i);
        let line = &text[line_start..line_end];
        let at = (
            text[..line_start].matches('\n').count() + 1,
            text[line_start..offset].chars().count() + 1,
        );
        // A line inside a multi-line string is a value, whatever it looks like; the text before
        // such a line does not parse on its own.
        let starts_a_statement = text[..line_start].parse::<toml::Table>().is_ok();
        let (key, rest) = match line.split_once('=') {
            Some((key, rest)) if starts_a_statement && is_bare_key(key.trim()) => {
                (Some(key.trim().to_owned()), rest)
            }
            _ => (None, line),
        };
        let message =
            Some(error.message().trim().to_owned()).filter(|m| !m.is_empty() && !quotes(m, rest));
        SyntaxError {
            at: Some(at),
            key,
            message,
        }
    }
}

/// A bare or dotted key of plain characters: a name, not a value.
fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|part| {
            let part = part.trim();
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// Whether `message` repeats four or more consecutive characters of `text`.
fn quotes(message: &str, text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    chars
        .windows(4)
        .any(|w| message.contains(&w.iter().collect::<String>()))
}

/// Values that override the file: from the environment or the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub bind: Option<String>,
    pub database_url: Option<String>,
    pub admin_token: Option<String>,
}

impl Overrides {
    /// The documented `PAYHOOK_*` variables.
    pub fn from_env() -> Overrides {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Overrides {
            bind: var("PAYHOOK_BIND"),
            database_url: var("PAYHOOK_DATABASE_URL"),
            admin_token: var("PAYHOOK_ADMIN_TOKEN"),
        }
    }

    fn apply(&self, table: &mut toml::Table) {
        let mut set = |key: &str, value: &Option<String>| {
            if let Some(v) = value {
                table.insert(key.to_owned(), toml::Value::String(v.clone()));
            }
        };
        set("bind", &self.bind);
        set("database_url", &self.database_url);
        set("admin_token", &self.admin_token);
    }
}

impl Settings {
    /// Loads the layers in order. `file` is `--config`, else `PAYHOOK_CONFIG`, else none: no file
    /// is ever read unless asked for.
    pub fn load(
        file: Option<&Path>,
        env: &Overrides,
        flags: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let mut table: toml::Table = DEFAULTS.parse().expect("built-in defaults are valid TOML");
        let env_file = std::env::var_os("PAYHOOK_CONFIG").map(PathBuf::from);
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let overlay = parse(&text, &path)?;
            merge(&mut table, overlay);
        }
        env.apply(&mut table);
        flags.apply(&mut table);
        Settings::from_table(table)
    }

    /// Deserializes merged settings; the error names the offending key's full path.
    pub fn from_table(table: toml::Table) -> Result<Settings, ConfigError> {
        let mut strings = Vec::new();
        collect_strings(&table, &mut strings);
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = unquote_values(e.into_inner().message(), &strings);
                if path == "." {
                    ConfigError::Invalid(inner)
                } else {
                    ConfigError::Invalid(format!("{path}: {inner}"))
                }
            })?;
        settings.check()?;
        Ok(settings)
    }

    /// Parses a whole config text over the defaults; for tests and examples.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let mut table: toml::Table = DEFAULTS.parse().expect("built-in defaults are valid TOML");
        let overlay = parse(text, Path::new("<text>"))?;
        merge(&mut table, overlay);
        Settings::from_table(table)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        if self.pool.max_size == 0 {
            return invalid("pool.max_size must be at least 1");
        }
        if self.pool.rejection_max_size == 0 {
            return invalid("pool.rejection_max_size must be at least 1");
        }
        if self.pool.connection_timeout_secs == 0 {
            return invalid("pool.connection_timeout_secs must be at least 1");
        }
        if self.pool.lock_timeout_secs == 0 || self.pool.statement_timeout_secs == 0 {
            return invalid(
                "pool.lock_timeout_secs and pool.statement_timeout_secs must be at least 1",
            );
        }
        if self.pool.lock_timeout_secs >= self.pool.statement_timeout_secs {
            return invalid("pool.lock_timeout_secs must be below pool.statement_timeout_secs");
        }
        if self.commit.writers > self.pool.max_size as usize {
            return invalid(
                "commit.writers must not exceed pool.max_size (0 picks for the backend)",
            );
        }
        if !(1..=1024).contains(&self.commit.max_batch) {
            return invalid("commit.max_batch must be between 1 and 1024");
        }
        if self.commit.timeout_secs == 0 {
            return invalid("commit.timeout_secs must be at least 1");
        }
        if self.commit.timeout_secs <= self.pool.lock_timeout_secs {
            return invalid(
                "commit.timeout_secs must be above pool.lock_timeout_secs, or a notification that \
                 waits for a row lock is answered retry before the wait can end",
            );
        }
        let r = &self.recovery;
        if r.first_query_after_secs == 0 || r.max_interval_secs == 0 {
            return invalid(
                "recovery.first_query_after_secs and recovery.max_interval_secs must be at least 1",
            );
        }
        const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
        if [
            r.first_query_after_secs,
            r.max_interval_secs,
            r.expire_after_secs,
        ]
        .iter()
        .any(|secs| *secs > TEN_YEARS)
        {
            return invalid("recovery intervals must be at most ten years (315360000 s)");
        }
        if r.expire_after_secs <= r.first_query_after_secs {
            return invalid(
                "recovery.expire_after_secs must be more than recovery.first_query_after_secs",
            );
        }
        if self.inbox.keep_rejected == 0 {
            return invalid("inbox.keep_rejected must be at least 1");
        }
        if self.http.body_limit_bytes == 0 {
            return invalid("http.body_limit_bytes must be at least 1");
        }
        if self
            .admin_token
            .as_ref()
            .is_some_and(|t| t.expose().is_empty())
        {
            return invalid("admin_token must not be empty");
        }
        for (name, channel) in &self.channels {
            channel
                .check()
                .map_err(|e| ConfigError::Invalid(format!("channels.{name}: {e}")))?;
        }
        Ok(())
    }
}

/// Parses one config text; a syntax error gives its place, never the text there.
fn parse(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
    text.parse().map_err(|error| ConfigError::Syntax {
        path: path.to_path_buf(),
        error: SyntaxError::new(text, &error),
    })
}

/// Every string value in `table`, at any depth.
fn collect_strings(table: &toml::Table, out: &mut Vec<String>) {
    fn walk(value: &toml::Value, out: &mut Vec<String>) {
        match value {
            toml::Value::String(s) => out.push(s.clone()),
            toml::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            toml::Value::Table(table) => table.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    table.values().for_each(|v| walk(v, out));
}

/// serde's messages quote a value of the wrong type or variant (`invalid type: string "..."`),
/// and that value may be a secret in the wrong place: name its type only.
fn unquote_values(message: &str, strings: &[String]) -> String {
    let mut message = message.to_owned();
    for s in strings {
        message = message
            .replace(&format!("string {s:?}"), "a string")
            .replace(&format!("variant `{s}`"), "variant");
    }
    message
}

/// Merges `overlay` into `base`: tables key by key, everything else replaced whole.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_alone_give_sqlite_on_loopback_and_no_channels() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.bind, "127.0.0.1:8080");
        assert_eq!(s.database_url.expose(), "sqlite://data/payhook.db");
        assert!(s.admin_token.is_none());
        assert!(s.channels.is_empty());
        assert_eq!(s.http.body_limit_bytes, 64 * 1024);
    }

    #[test]
    fn commit_settings_are_bounded() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!((s.commit.writers, s.commit.max_batch), (0, 64));
        for (text, key) in [
            ("[commit]\nwriters = 11\n", "commit.writers"),
            (
                "[pool]\nmax_size = 2\n[commit]\nwriters = 3\n",
                "commit.writers",
            ),
            ("[commit]\nmax_batch = 0\n", "commit.max_batch"),
            ("[commit]\nmax_batch = 1025\n", "commit.max_batch"),
            ("[commit]\ntimeout_secs = 0\n", "commit.timeout_secs"),
            ("[commit]\ntimeout_secs = 2\n", "commit.timeout_secs"),
        ] {
            let error = Settings::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
        let s = Settings::from_toml("[commit]\nwriters = 10\nmax_batch = 1\n").unwrap();
        assert_eq!((s.commit.writers, s.commit.max_batch), (10, 1));
    }

    #[test]
    fn recovery_settings_default_and_are_bounded() {
        let s = Settings::from_toml("").unwrap();
        let r = &s.recovery;
        assert!(r.enabled);
        assert_eq!(
            (
                r.first_query_after_secs,
                r.max_interval_secs,
                r.expire_after_secs
            ),
            (60, 600, 7200)
        );
        for (text, key) in [
            (
                "[recovery]
first_query_after_secs = 0
",
                "first_query_after_secs",
            ),
            (
                "[recovery]
max_interval_secs = 0
",
                "max_interval_secs",
            ),
            (
                "[recovery]
expire_after_secs = 60
",
                "expire_after_secs",
            ),
            (
                "[recovery]
every = 3
",
                "every",
            ),
        ] {
            let error = Settings::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn rejected_requests_kept_default_to_ten_thousand_and_at_least_one() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.inbox.keep_rejected, 10_000);
        let s = Settings::from_toml("[inbox]\nkeep_rejected = 1\n").unwrap();
        assert_eq!(s.inbox.keep_rejected, 1);
        for text in [
            "[inbox]\nkeep_rejected = 0\n",
            "[inbox]\nkeep_rejected = -5\n",
        ] {
            let error = Settings::from_toml(text).unwrap_err().to_string();
            assert!(error.contains("inbox.keep_rejected"), "{text}: {error}");
        }
        let error = Settings::from_toml("[inbox]\nkeep = 5\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("inbox") && error.contains("keep"), "{error}");
    }

    #[test]
    fn later_layers_override_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "bind = \"0.0.0.0:1\"\ndatabase_url = \"sqlite://file.db\"\n[pool]\nmax_size = 3\n",
        )
        .unwrap();
        let env = Overrides {
            database_url: Some("sqlite://env.db".into()),
            ..Overrides::default()
        };
        let flags = Overrides {
            bind: Some("127.0.0.1:9".into()),
            ..Overrides::default()
        };
        let s = Settings::load(Some(&path), &env, &flags).unwrap();
        assert_eq!(s.bind, "127.0.0.1:9");
        assert_eq!(s.database_url.expose(), "sqlite://env.db");
        assert_eq!(s.pool.max_size, 3);
        // keys the file left alone keep their defaults
        assert_eq!(s.pool.connection_timeout_secs, 3);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let err = Settings::from_toml("[pool]\nmax_sise = 3\n").unwrap_err();
        assert!(err.to_string().contains("pool"), "{err}");
        assert!(err.to_string().contains("max_sise"), "{err}");

        let err = Settings::from_toml(
            "[channels.ali]\nprovider = \"alipay\"\napp_idd = \"1\"\nalipay_public_key = \"k\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("channels.ali"), "{err}");
        assert!(err.to_string().contains("app_idd"), "{err}");

        let err =
            Settings::from_toml("[channels.\"bad name\"]\nprovider = \"stripe\"\nsecrets = []\n")
                .unwrap_err();
        assert!(err.to_string().contains("bad name"), "{err}");

        let err = Settings::from_toml(
            "[channels.s]\nprovider = \"stripe\"\nsecrets = [\"k\"]\ntimestamp_tolerance_secs = 0\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("channels.s: timestamp_tolerance_secs"),
            "{err}"
        );
        let err = Settings::from_toml(
            "[channels.a]\nprovider = \"alipay\"\napp_id = \" \"\nalipay_public_key = \"k\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("channels.a: app_id must not be empty"),
            "{err}"
        );

        let err = Settings::from_toml("[pool]\nmax_size = 0\n").unwrap_err();
        assert!(err.to_string().contains("pool.max_size"), "{err}");
        let err = Settings::from_toml("[pool]\nrejection_max_size = 0\n").unwrap_err();
        assert!(err.to_string().contains("pool.rejection_max_size"), "{err}");
    }

    #[test]
    fn syntax_errors_name_file_line_column_and_key_but_never_the_text_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("payhook.toml");
        for (text, at, key) in [
            (
                "bind = \"127.0.0.1:1\"\nadmin_token = \"s3cr3t-token\" x\n",
                "line 2, column 30",
                Some("admin_token"),
            ),
            (
                "admin_token = \"s3cr3t-one\"\nadmin_token = \"s3cr3t-two\"\n",
                "line 2, column 1",
                Some("admin_token"),
            ),
            (
                "database_url = \"postgres://u:s3cr3t@db/p\nbind = \"x\"\n",
                "line 1, column 41",
                Some("database_url"),
            ),
            // Inside a multi-line string, what looks like a key is part of the value.
            (
                "admin_token = \"\"\"\ns3cr3t_key = \\q\n\"\"\"\n",
                "line 2, column 15",
                None,
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let from_file =
                Settings::load(Some(&path), &Overrides::default(), &Overrides::default())
                    .unwrap_err()
                    .to_string();
            let from_text = Settings::from_toml(text).unwrap_err().to_string();
            for error in [&from_file, &from_text] {
                assert!(error.contains(at), "{text:?}: {error}");
                assert!(
                    !error.contains("s3cr3t"),
                    "{text:?}: secret leaked: {error}"
                );
                match key {
                    Some(key) => assert!(error.contains(&format!("key {key}")), "{error}"),
                    None => assert!(!error.contains("key"), "{error}"),
                }
            }
            assert!(
                from_file.contains(&path.display().to_string()),
                "{from_file}"
            );
        }
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed() {
        for text in [
            "[channels.s]\nprovider = \"stripe\"\nsecrets = \"whsec_s3cr3t\"\n",
            "[pool]\nmax_size = \"s3cr3t\"\n",
            "[channels.s]\nprovider = \"s3cr3t\"\n",
            "[channels.s]\nprovider = \"stripe\"\nsecrets = [\"k\"]\ncurrency = \"whsec_s3cr3t\"\n",
        ] {
            let error = Settings::from_toml(text).unwrap_err().to_string();
            assert!(
                !error.contains("s3cr3t"),
                "{text:?}: secret leaked: {error}"
            );
            assert!(
                error.contains("channels.s") || error.contains("pool.max_size"),
                "{error}"
            );
        }
    }

    #[test]
    fn secrets_come_inline_from_a_file_or_from_the_environment_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "whsec_from_file\n").unwrap();
        std::env::set_var("PAYHOOK_TEST_SECRET_XYZ", "whsec_from_env");
        let text = format!(
            "[channels.s]\nprovider = \"stripe\"\nsecrets = [\"whsec_inline\", {{ file = {:?} }}, {{ env = \"PAYHOOK_TEST_SECRET_XYZ\" }}]\n",
            path.display().to_string()
        );
        let s = Settings::from_toml(&text).unwrap();
        let ChannelConfig::Stripe(stripe) = &s.channels[&ChannelName::parse("s").unwrap()] else {
            panic!("expected a stripe channel");
        };
        let values: Vec<&str> = stripe.secrets.iter().map(Secret::expose).collect();
        assert_eq!(
            values,
            ["whsec_inline", "whsec_from_file", "whsec_from_env"]
        );
        let printed = format!("{s:?}");
        for v in values {
            assert!(!printed.contains(v), "secret {v} leaked into Debug output");
        }

        let err = Settings::from_toml(
            "[channels.s]\nprovider = \"stripe\"\nsecrets = [{ env = \"PAYHOOK_TEST_UNSET_VAR\" }]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("PAYHOOK_TEST_UNSET_VAR"), "{err}");
    }

    #[test]
    fn query_keys_are_optional_with_default_addresses_and_their_shapes_are_checked() {
        let alipay =
            "[channels.a]\nprovider = \"alipay\"\napp_id = \"1\"\nalipay_public_key = \"k\"\n";
        let wechat = "[channels.w]\nprovider = \"wechatpay\"\nmchid = \"1\"\nappid = \"wx\"\n\
                      apiv3_key = \"k\"\npublic_keys = { K = \"k\" }\n";
        let stripe = "[channels.s]\nprovider = \"stripe\"\nsecrets = [\"whsec_x\"]\n";
        let s = Settings::from_toml(&format!("{alipay}{wechat}{stripe}")).unwrap();
        let channel = |name: &str| &s.channels[&ChannelName::parse(name).unwrap()];
        let ChannelConfig::Alipay(a) = channel("a") else {
            panic!()
        };
        assert!(a.app_private_key.is_none());
        assert_eq!(a.gateway_url, "https://openapi.alipay.com/gateway.do");
        let ChannelConfig::WechatPay(w) = channel("w") else {
            panic!()
        };
        assert!(w.merchant_private_key.is_none() && w.merchant_serial_no.is_none());
        assert_eq!(w.api_base, "https://api.mch.weixin.qq.com");
        let ChannelConfig::Stripe(st) = channel("s") else {
            panic!()
        };
        assert!(st.api_key.is_none());
        assert_eq!(st.api_base, "https://api.stripe.com");

        let ok = [
            format!("{alipay}app_private_key = \"MIIE\"\ngateway_url = \"https://openapi-sandbox.dl.alipaydev.com/gateway.do\"\n"),
            format!("{wechat}merchant_private_key = \"k\"\nmerchant_serial_no = \"5157F09E\"\n"),
            format!("{stripe}api_key = \"rk_live_abc\"\napi_base = \"http://127.0.0.1:9/\"\n"),
        ];
        for text in ok {
            Settings::from_toml(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        for (text, error) in [
            (
                format!("{alipay}app_private_key = \" \"\n"),
                "channels.a: app_private_key must not be empty",
            ),
            (
                format!("{alipay}app_private_key = \"k\"\nsign_type = \"RSA\"\n"),
                "channels.a: app_private_key: asking Alipay needs an app set up for RSA2",
            ),
            (
                format!("{alipay}gateway_url = \"http://openapi.alipay.com/gateway.do\"\n"),
                "channels.a: gateway_url must be an https:// URL",
            ),
            (
                format!("{alipay}gateway_url = \"gateway\"\n"),
                "channels.a: gateway_url is not a URL",
            ),
            (
                format!("{wechat}merchant_private_key = \"k\"\n"),
                "channels.w: merchant_private_key and merchant_serial_no go together",
            ),
            (
                format!("{wechat}merchant_serial_no = \"5157\"\n"),
                "channels.w: merchant_private_key and merchant_serial_no go together",
            ),
            (
                format!(
                    "{wechat}merchant_private_key = \"k\"\nmerchant_serial_no = \"51\\\"57\"\n"
                ),
                "channels.w: merchant_serial_no must be",
            ),
            (
                format!("{wechat}api_base = \"https://u:p@api.mch.weixin.qq.com\"\n"),
                "channels.w: api_base must hold no credentials",
            ),
            (
                format!("{stripe}api_key = \"pk_live_s3cr3t\"\n"),
                "channels.s: api_key must be a secret key",
            ),
            (
                format!("{stripe}api_key = \"sk_live_s3cr3t with space\"\n"),
                "channels.s: api_key must be a secret key",
            ),
            (
                format!("{stripe}api_base = \"http://api.stripe.com\"\n"),
                "channels.s: api_base must be an https:// URL",
            ),
        ] {
            let got = Settings::from_toml(&text).unwrap_err().to_string();
            assert!(got.contains(error), "{text}: {got}");
            assert!(!got.contains("s3cr3t"), "{text}: secret leaked: {got}");
        }
    }
}

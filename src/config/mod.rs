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
    AlipayConfig, ChannelConfig, Secret, StandardWebhooksConfig, StripeConfig, WechatPayConfig,
};

use crate::ids::ChannelName;

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
    #[serde(default)]
    pub channels: BTreeMap<ChannelName, ChannelConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    pub max_size: u32,
    pub connection_timeout_secs: u64,
    pub test_on_checkout: bool,
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

/// How notifications share transactions (see [`crate::committer`]).
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
    #[error("config file {path} is not valid TOML: {source}")]
    Syntax {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config: {0}")]
    Invalid(String),
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
            let overlay: toml::Table = text.parse().map_err(|source| ConfigError::Syntax {
                path: path.clone(),
                source: Box::new(source),
            })?;
            merge(&mut table, overlay);
        }
        env.apply(&mut table);
        flags.apply(&mut table);
        Settings::from_table(table)
    }

    /// Deserializes merged settings; the error names the offending key's full path.
    pub fn from_table(table: toml::Table) -> Result<Settings, ConfigError> {
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().message().to_owned();
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
        let overlay: toml::Table = text.parse().map_err(|source| ConfigError::Syntax {
            path: PathBuf::from("<text>"),
            source: Box::new(source),
        })?;
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
        ] {
            let error = Settings::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
        let s = Settings::from_toml("[commit]\nwriters = 10\nmax_batch = 1\n").unwrap();
        assert_eq!((s.commit.writers, s.commit.max_batch), (10, 1));
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
}

//! The TOML file: its sections, flat keys, and the defaults as a table.

use serde::Deserialize;

use super::{bad, Config, ConfigError};

/// Sections of the TOML file and the prefix their keys take as flat keys.
const SECTIONS: &[(&str, &str)] = &[
    ("spool", ""),
    ("relay", "relay_"),
    ("retry", "retry_"),
    ("grpc", "grpc_"),
    ("congestion", "congestion_"),
    ("limits", ""),
    ("log", "log_"),
    ("tls", "tls_"),
    ("message", "message_"),
];

/// Whether `key` is a setting: the struct itself says (unknown fields are
/// refused), so there is no second list of names to keep in step.
pub fn is_setting(key: &str) -> bool {
    let probe: toml::Table = [(key.to_string(), toml::Value::Table(toml::Table::new()))]
        .into_iter()
        .collect();
    match Config::deserialize(probe) {
        Ok(_) => true,
        Err(e) => !e.to_string().contains("unknown field"),
    }
}

impl Config {
    /// Reads a TOML file over the defaults.
    /// A TOML file as flat keys (`toml_table`).
    pub fn toml_file_table(path: &std::path::Path) -> Result<toml::Table, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
        Config::toml_table(&text)
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_table(Config::toml_table(text)?)
    }

    /// A TOML text as flat keys: `[spool]`, `[relay]`, `[retry]`,
    /// `[grpc]`, `[congestion]`, `[limits]`, `[log]` and `[tls]` sections
    /// are lifted to the top level (in `[relay]`, `max_connections` is
    /// `relay_max_connections`; a key already spelled in full is kept), so
    /// the flat keys of older files and the sections mean the same.
    pub fn toml_table(text: &str) -> Result<toml::Table, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad("config", e.to_string()))?;
        let mut flat = toml::Table::new();
        for (key, value) in table {
            let section = SECTIONS.iter().find(|(name, _)| *name == key);
            match (section, value) {
                (Some((name, prefix)), toml::Value::Table(inner)) => {
                    for (k, v) in inner {
                        let full = format!("{prefix}{k}");
                        let key =
                            if prefix.is_empty() || k.starts_with(prefix) || !is_setting(&full) {
                                k
                            } else {
                                full
                            };
                        if !is_setting(&key) {
                            return Err(bad("config", format!("unknown key `{key}` in [{name}]; the README's table lists the keys")));
                        }
                        if flat.insert(key.clone(), v).is_some() {
                            return Err(bad(
                                "config",
                                format!("`{key}` is set twice (in [{name}] and elsewhere)"),
                            ));
                        }
                    }
                }
                (_, value) => {
                    if flat.insert(key.clone(), value).is_some() {
                        return Err(bad("config", format!("`{key}` is set twice")));
                    }
                }
            }
        }
        Ok(flat)
    }

    /// Flat keys over the defaults.
    pub fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
        if table.contains_key("relay_password") {
            return Err(bad(
                "relay_password",
                "a password never goes in the config file (anyone who can read the config \
                 would have it): use MAILSPOOL_RELAY_PASSWORD or relay_password_file",
            ));
        }
        let entries = table.get("relays").and_then(|v| v.as_array());
        for entry in entries.into_iter().flatten() {
            if let Some(t) = entry.as_table().filter(|t| t.contains_key("password")) {
                let name = t.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                return Err(bad(
                    "relays",
                    format!(
                        "relay `{name}`: a password never goes in the config file (anyone who \
                         can read the config would have it): use password_file or password_env"
                    ),
                ));
            }
        }
        let hooks = table.get("webhooks").and_then(|v| v.as_array());
        for entry in hooks.into_iter().flatten() {
            if let Some(t) = entry.as_table().filter(|t| t.contains_key("secret")) {
                let name = t.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                return Err(bad(
                    "webhooks",
                    format!(
                        "webhook `{name}`: the signing secret never goes in the config file \
                         (anyone who can read the config could forge events): use secret_file"
                    ),
                ));
            }
        }
        Config::deserialize(table).map_err(|e| bad("config", e.to_string()))
    }

    /// Every default as its TOML value, by key (the one source of the
    /// defaults the flags' help shows). Settings without a default (the
    /// relay, TLS files, ...) are absent.
    pub fn defaults() -> toml::Table {
        toml::Table::try_from(Config::default()).expect("the defaults serialize")
    }
}

//! `[[webhooks]]`: HTTP endpoints told of every event (Standard Webhooks).
//! Each has a name (its cursor in the spool, its label in metrics), a URL
//! (https, or http to loopback), a signing secret read from a file, and
//! filters by event type and client.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{bad, name_ok, Config, ConfigError};
use crate::model::EventKind;

/// One webhook endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Its cursor's name in the spool and its label (`webhook`) in metrics:
    /// renaming an endpoint starts it afresh.
    pub name: String,
    /// `https://…`, or `http://` to a loopback address.
    pub url: String,
    /// The signing secret, `whsec_` + base64 (as Standard Webhooks
    /// libraries make it), read at start; never in the TOML, never logged.
    pub secret_file: PathBuf,
    #[serde(skip)]
    pub secret: Option<SigningKey>,
    /// Event types it gets (`delivered`, `bounced`, …); empty = all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Clients whose messages' events it gets; empty = all.
    #[serde(default)]
    pub clients: Vec<String>,
    /// One request's timeout; a timeout is a failure, retried.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The longest wait between retries of a failing endpoint.
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u64,
    /// After failing this long without a success, the endpoint is
    /// `failing` (in stats and metrics) and a WARN says so; it keeps
    /// being retried.
    #[serde(default = "default_failing_after_secs")]
    pub failing_after_secs: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_max_backoff_secs() -> u64 {
    60
}

fn default_failing_after_secs() -> u64 {
    600
}

/// The HMAC key a secret file holds (decoded); shown as `***`.
#[derive(Clone, PartialEq)]
pub struct SigningKey(pub Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// `whsec_<base64>` (the prefix optional), as Standard Webhooks
    /// libraries read it.
    pub fn parse(text: &str) -> Result<SigningKey, String> {
        use base64::Engine;
        let t = text.trim();
        let b64 = t.strip_prefix("whsec_").unwrap_or(t);
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| {
                "is not `whsec_` followed by base64 (a Standard Webhooks secret)".to_string()
            })?;
        if key.len() < 16 {
            return Err(format!(
                "holds a {}-byte key; use at least 24 random bytes (`whsec_` + base64)",
                key.len()
            ));
        }
        Ok(SigningKey(key))
    }
}

impl WebhookConfig {
    /// The event kinds it gets (None: all); names checked by `validate`.
    pub fn kinds(&self) -> Option<Vec<EventKind>> {
        (!self.events.is_empty()).then(|| {
            self.events
                .iter()
                .filter_map(|e| EventKind::parse(e))
                .collect()
        })
    }

    /// Checks one endpoint and reads its secret: (field, reason) on error.
    fn check(&mut self) -> Result<(), (&'static str, String)> {
        let url =
            reqwest::Url::parse(&self.url).map_err(|e| ("url", format!("`{}`: {e}", self.url)))?;
        let loopback = url.host_str().is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err((
                    "url",
                    format!(
                        "`{}`: plain http only to a loopback address; events name recipients, \
                         so use https",
                        self.url
                    ),
                ))
            }
            s => return Err(("url", format!("`{}`: scheme `{s}`: use https://", self.url))),
        }
        for e in &self.events {
            if EventKind::parse(e).is_none() {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
                return Err((
                    "events",
                    format!("`{e}` is not an event type ({})", known.join(", ")),
                ));
            }
        }
        if self.timeout_ms == 0 {
            return Err(("timeout_ms", "must be greater than 0".into()));
        }
        if self.max_backoff_secs == 0 {
            return Err(("max_backoff_secs", "must be greater than 0".into()));
        }
        let text = std::fs::read_to_string(&self.secret_file).map_err(|e| {
            (
                "secret_file",
                format!("cannot read {}: {e}", self.secret_file.display()),
            )
        })?;
        let key = SigningKey::parse(&text).map_err(|why| {
            (
                "secret_file",
                format!("{} {why}", self.secret_file.display()),
            )
        })?;
        self.secret = Some(key);
        Ok(())
    }
}

impl Config {
    /// Checks every `[[webhooks]]` entry, naming the endpoint and field.
    pub(super) fn validate_webhooks(&mut self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for w in &mut self.webhooks {
            if !name_ok(&w.name) {
                return Err(bad(
                    "webhooks",
                    format!(
                        "webhook name `{}`: use letters, digits, `.`, `_` and `-`",
                        w.name
                    ),
                ));
            }
            if !names.insert(w.name.clone()) {
                return Err(bad(
                    "webhooks",
                    format!(
                        "two webhooks are named `{}`: each needs its own name (its cursor)",
                        w.name
                    ),
                ));
            }
            let name = w.name.clone();
            w.check().map_err(|(field, why)| {
                bad("webhooks", format!("webhook `{name}`: `{field}`: {why}"))
            })?;
        }
        Ok(())
    }
}

//! `[[relays]]`: several smarthosts, each with its TLS, credentials,
//! limits and routes. The single `relay`, `relay_tls`, `relay_user`, …
//! settings are one relay named `default` (`Config::relay_set`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{bad, name_ok, Config, ConfigError, RelayTls, RelayUrl, Secret};

/// The name the flat `relay` settings' relay has.
pub const DEFAULT_RELAY: &str = "default";

/// One relay: where it is, how to talk to it, how much it takes, and
/// which messages it carries.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Shown in stats, metrics (label `relay`) and `mailspool relay pause`.
    pub name: String,
    /// `smtp://host[:port]` or `smtps://host[:port]`.
    pub url: String,
    /// Default: verify, or opportunistic when the relay is on loopback.
    #[serde(default)]
    pub tls: Option<RelayTls>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    #[serde(default)]
    pub helo_name: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// The password is read from this file at start ...
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// ... or from this environment variable; never from the TOML.
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(skip)]
    pub password: Option<Secret>,
    /// AUTH XOAUTH2 with the token in this file, re-read per connection.
    #[serde(default)]
    pub oauth2_token_file: Option<PathBuf>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Messages per second at most (a hard ceiling); 0 = none.
    #[serde(default)]
    pub rate_per_second: u32,
    /// Messages sent back to back above the rate; 0 = none (evenly spaced).
    #[serde(default)]
    pub burst: u32,
    /// Lower is preferred; the next priority takes over when every relay
    /// of the best one is down.
    #[serde(default)]
    pub priority: u32,
    /// Share among the healthy relays of one priority.
    #[serde(default = "one")]
    pub weight: u32,
    /// Lanes it carries (`transactional`, `normal`, `bulk`); empty = all.
    #[serde(default)]
    pub lanes: Vec<String>,
    /// From addresses (`alerts@example.com`) or domains (`@example.com`)
    /// it carries; empty = all.
    #[serde(default)]
    pub senders: Vec<String>,
}

impl RelayConfig {
    /// A relay with every other setting at its default.
    pub fn new(name: &str, url: &str) -> RelayConfig {
        RelayConfig {
            name: name.into(),
            url: url.into(),
            tls: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            helo_name: None,
            user: None,
            password_file: None,
            password_env: None,
            password: None,
            oauth2_token_file: None,
            max_connections: default_max_connections(),
            rate_per_second: 0,
            burst: 0,
            priority: 0,
            weight: 1,
            lanes: Vec::new(),
            senders: Vec::new(),
        }
    }
}

fn default_max_connections() -> usize {
    16
}

fn one() -> u32 {
    1
}

/// A bad relay setting: the field (as in `[[relays]]`) and why.
type FieldError = (&'static str, String);

impl RelayConfig {
    pub fn parsed_url(&self) -> RelayUrl {
        RelayUrl::parse(&self.url).expect("validated at start")
    }

    /// The TLS level: as set, else verify (opportunistic on loopback).
    pub fn effective_tls(&self) -> RelayTls {
        match (self.tls, RelayUrl::parse(&self.url)) {
            (Some(t), _) => t,
            (None, Ok(url)) if url.is_loopback() => RelayTls::Opportunistic,
            _ => RelayTls::Verify,
        }
    }

    /// Reads the password (file or environment variable) into `password`.
    fn read_password(&mut self) -> Result<(), FieldError> {
        if let Some(file) = &self.password_file {
            let pw = std::fs::read_to_string(file).map_err(|e| {
                (
                    "password_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            self.password = Some(Secret(pw.trim_end_matches(['\r', '\n']).to_string()));
        }
        if let Some(var) = &self.password_env {
            if self.password_file.is_some() {
                return Err((
                    "password_env",
                    "give password_file or password_env, not both".into(),
                ));
            }
            let pw = std::env::var(var).map_err(|_| {
                (
                    "password_env",
                    format!("the environment variable {var} is not set"),
                )
            })?;
            self.password = Some(Secret(pw));
        }
        Ok(())
    }

    /// Every check of one relay; `password_hint` says where a password goes.
    fn check(&self, password_hint: &str) -> Result<(), FieldError> {
        let url = RelayUrl::parse(&self.url).map_err(|e| ("url", e))?;
        if url.implicit_tls && self.tls == Some(RelayTls::None) {
            return Err(("tls", "`none` contradicts an smtps:// relay".into()));
        }
        self.check_identity()?;
        if self.password.is_some() && self.user.is_none() {
            return Err(("user", "a relay password is set but no relay user".into()));
        }
        if let Some(file) = &self.oauth2_token_file {
            if self.user.is_none() {
                return Err((
                    "user",
                    "an OAuth2 token file is set but no relay user".into(),
                ));
            }
            if self.password.is_some() {
                return Err((
                    "oauth2_token_file",
                    "give a password or an OAuth2 token file, not both".into(),
                ));
            }
            std::fs::metadata(file).map_err(|e| {
                (
                    "oauth2_token_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
        } else if self.user.is_some() && self.password.is_none() {
            return Err((
                "password",
                format!("a relay user is set: give the password in {password_hint} (or an OAuth2 token file)"),
            ));
        }
        if self.max_connections == 0 {
            return Err(("max_connections", "must be greater than 0".into()));
        }
        if self.weight == 0 {
            return Err((
                "weight",
                "must be greater than 0 (remove the relay or pause it)".into(),
            ));
        }
        if let Some(l) = self
            .lanes
            .iter()
            .find(|l| crate::model::Lane::parse(l).is_none())
        {
            return Err((
                "lanes",
                format!("unknown lane `{l}`: use transactional, normal or bulk"),
            ));
        }
        if let Some(s) = self.senders.iter().find(|s| !valid_sender(s)) {
            return Err((
                "senders",
                format!(
                    "`{s}` is neither an address (alerts@example.com) nor a domain (@example.com)"
                ),
            ));
        }
        Ok(())
    }

    /// The CA file, client certificate and EHLO name: readable, parseable,
    /// and set only together with what they need.
    fn check_identity(&self) -> Result<(), FieldError> {
        let pem = |key: &'static str, file: &PathBuf| -> Result<Vec<u8>, FieldError> {
            let bytes = std::fs::read(file)
                .map_err(|e| (key, format!("cannot read {}: {e}", file.display())))?;
            if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
                return Err((key, format!("{} is not PEM", file.display())));
            }
            Ok(bytes)
        };
        if let Some(file) = &self.ca_file {
            let bytes = pem("ca_file", file)?;
            lettre::transport::smtp::client::Certificate::from_pem(&bytes)
                .map_err(|e| ("ca_file", format!("{}: {e}", file.display())))?;
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => {
                let (c, k) = (pem("client_cert_file", cert)?, pem("client_key_file", key)?);
                lettre::transport::smtp::client::Identity::from_pem(&c, &k).map_err(|e| {
                    (
                        "client_cert_file",
                        format!("{} with {}: {e}", cert.display(), key.display()),
                    )
                })?;
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err((
                    "client_key_file",
                    "the client certificate needs its key".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "client_cert_file",
                    "the client key needs its certificate".into(),
                ))
            }
        }
        if let Some(name) = &self.helo_name {
            let literal = name.starts_with('[') && name.ends_with(']');
            let domain = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !(literal || domain) {
                return Err((
                    "helo_name",
                    format!("`{name}` is neither a domain name (mail.example.com) nor an address literal ([192.0.2.7])"),
                ));
            }
        }
        Ok(())
    }
}

/// `alerts@example.com` or `@example.com`.
fn valid_sender(s: &str) -> bool {
    match s.split_once('@') {
        Some((_, domain)) => {
            !domain.is_empty() && !domain.contains('@') && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// The flat key (`relay_ca_file`) of a `[[relays]]` field (`ca_file`).
fn flat_key(field: &'static str) -> &'static str {
    match field {
        "url" => "relay",
        "tls" => "relay_tls",
        "ca_file" => "relay_ca_file",
        "client_cert_file" => "relay_client_cert_file",
        "client_key_file" => "relay_client_key_file",
        "helo_name" => "relay_helo_name",
        "user" => "relay_user",
        "password" | "password_env" => "relay_password",
        "password_file" => "relay_password_file",
        "oauth2_token_file" => "relay_oauth2_token_file",
        "max_connections" => "relay_max_connections",
        "rate_per_second" => "relay_rate_per_second",
        "burst" => "relay_burst",
        _ => "relay",
    }
}

impl Config {
    /// Every relay, in configuration order: the `[[relays]]` entries, or
    /// the flat `relay` settings as one relay named `default` (call after
    /// `validate`, which reads the passwords). Empty = the local outbox.
    pub fn relay_set(&self) -> Vec<RelayConfig> {
        match self.default_relay() {
            Some(d) => vec![d],
            None => self.relays.clone(),
        }
    }

    fn default_relay(&self) -> Option<RelayConfig> {
        Some(RelayConfig {
            tls: self.relay_tls,
            ca_file: self.relay_ca_file.clone(),
            client_cert_file: self.relay_client_cert_file.clone(),
            client_key_file: self.relay_client_key_file.clone(),
            helo_name: self.relay_helo_name.clone(),
            user: self.relay_user.clone(),
            password_file: None,
            password_env: None,
            password: self.relay_password.clone(),
            oauth2_token_file: self.relay_oauth2_token_file.clone(),
            max_connections: self.relay_max_connections,
            rate_per_second: self.relay_rate_per_second,
            burst: self.relay_burst,
            ..RelayConfig::new(DEFAULT_RELAY, self.relay.as_deref()?)
        })
    }

    /// The relay settings, flat or `[[relays]]`: each checked, the
    /// passwords read from their files.
    pub(super) fn validate_relays(&mut self) -> Result<(), ConfigError> {
        if let Some(file) = &self.relay_password_file {
            let pw = std::fs::read_to_string(file).map_err(|e| {
                bad(
                    "relay_password_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            self.relay_password = Some(Secret(pw.trim_end_matches(['\r', '\n']).to_string()));
        }
        match self.default_relay() {
            Some(d) => {
                if !self.relays.is_empty() {
                    return Err(bad(
                        "relays",
                        "give either `relay` (one relay) or [[relays]] entries, not both: \
                         move the single relay into [[relays]] with name = \"default\"",
                    ));
                }
                d.check("MAILSPOOL_RELAY_PASSWORD or relay_password_file")
                    .map_err(|(field, reason)| bad(flat_key(field), reason))?;
            }
            None => self.refuse_flat_settings_without_relay()?,
        }
        let mut names = std::collections::HashSet::new();
        for r in &mut self.relays {
            let name = r.name.clone();
            let named = |(field, reason): FieldError| {
                bad("relays", format!("relay `{name}`: `{field}`: {reason}"))
            };
            if !name_ok(&r.name) {
                return Err(bad(
                    "relays",
                    format!(
                        "relay name `{}`: use letters, digits, `.`, `_` and `-`",
                        r.name
                    ),
                ));
            }
            if !names.insert(r.name.clone()) {
                return Err(bad("relays", format!("two relays are named `{}`", r.name)));
            }
            r.read_password().map_err(named)?;
            r.check("password_file or password_env").map_err(named)?;
        }
        // No message may be left without a relay: each lane needs one that
        // takes every sender.
        if !self.relays.is_empty() {
            for lane in crate::model::Lane::ALL {
                let carried = self.relays.iter().any(|r| {
                    r.senders.is_empty()
                        && (r.lanes.is_empty() || r.lanes.iter().any(|l| l == lane.name()))
                });
                if !carried {
                    return Err(bad(
                        "relays",
                        format!(
                            "no relay carries `{}` mail from every sender, so some would have no \
                             relay: give one relay no `senders` and a `lanes` that includes it (or none)",
                            lane.name()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn refuse_flat_settings_without_relay(&self) -> Result<(), ConfigError> {
        let set = [
            ("relay_user", self.relay_user.is_some()),
            ("relay_ca_file", self.relay_ca_file.is_some()),
            (
                "relay_client_cert_file",
                self.relay_client_cert_file.is_some(),
            ),
            (
                "relay_client_key_file",
                self.relay_client_key_file.is_some(),
            ),
            ("relay_helo_name", self.relay_helo_name.is_some()),
            (
                "relay_oauth2_token_file",
                self.relay_oauth2_token_file.is_some(),
            ),
            ("relay_rate_per_second", self.relay_rate_per_second != 0),
        ];
        match set.iter().find(|(_, on)| *on) {
            Some((key, _)) => Err(bad(key, "set without a relay")),
            None => Ok(()),
        }
    }
}

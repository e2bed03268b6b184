//! The relay's settings: its URL, its TLS level, and their validation
//! (certificates, EHLO name, credentials, DKIM keys).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{bad, Config, ConfigError, Secret};

/// TLS policy towards the relay, as Postfix's `smtp_tls_security_level`
/// means its levels (RFC 7435 for the opportunistic one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// Plain SMTP, never STARTTLS (not with smtps://).
    None,
    /// STARTTLS when the relay offers it, the certificate not verified
    /// (Postfix `may`); plain SMTP when it does not.
    Opportunistic,
    /// TLS mandatory (STARTTLS or smtps://), the certificate not verified
    /// (Postfix `encrypt`).
    Encrypt,
    /// TLS mandatory, the certificate chain and the relay's name verified
    /// against the web roots or `relay_ca_file` (Postfix `verify`/`secure`).
    /// `required`, the earlier spelling, means this.
    #[serde(alias = "required")]
    #[value(alias = "required")]
    Verify,
}

impl RelayTls {
    pub fn name(self) -> &'static str {
        match self {
            RelayTls::None => "none",
            RelayTls::Opportunistic => "opportunistic",
            RelayTls::Encrypt => "encrypt",
            RelayTls::Verify => "verify",
        }
    }
}

/// A parsed `--relay` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    pub host: String,
    pub port: u16,
    /// smtps://: TLS from the first byte.
    pub implicit_tls: bool,
}

impl RelayUrl {
    pub fn parse(url: &str) -> Result<RelayUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("expected smtp://host[:port] or smtps://host[:port]")?;
        let (implicit_tls, default_port) = match scheme {
            "smtp" => (false, 25),
            "smtps" => (true, 465),
            other => return Err(format!("unknown scheme `{other}`: use smtp:// or smtps://")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains(['/', '@', '?']) {
            return Err("expected only host[:port] after the scheme (credentials go in --relay-user and MAILSPOOL_RELAY_PASSWORD)".into());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?;
                (h, port)
            }
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("empty host".into());
        }
        Ok(RelayUrl {
            host: host.to_string(),
            port,
            implicit_tls,
        })
    }

    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

impl Config {
    /// The relay's settings: its URL and TLS level, the files it needs,
    /// its credentials (the password read from its file here), DKIM keys.
    pub(super) fn validate_relay(&mut self) -> Result<(), ConfigError> {
        if let Some(relay) = &self.relay {
            let url = RelayUrl::parse(relay).map_err(|e| bad("relay", e))?;
            if url.implicit_tls && self.relay_tls == Some(RelayTls::None) {
                return Err(bad("relay_tls", "`none` contradicts an smtps:// relay"));
            }
        } else if self.relay_user.is_some() {
            return Err(bad("relay_user", "set without a relay"));
        }
        self.validate_relay_identity()?;
        crate::intake::message::dkim::signers(&self.dkim).map_err(|e| bad("dkim", e))?;
        if let Some(file) = &self.relay_password_file {
            let pw = std::fs::read_to_string(file).map_err(|e| {
                bad(
                    "relay_password_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            self.relay_password = Some(Secret(pw.trim_end_matches(['\r', '\n']).to_string()));
        }
        if self.relay_password.is_some() && self.relay_user.is_none() {
            return Err(bad(
                "relay_user",
                "a relay password is set but no relay user",
            ));
        }
        if let Some(file) = &self.relay_oauth2_token_file {
            if self.relay_user.is_none() {
                return Err(bad(
                    "relay_user",
                    "relay_oauth2_token_file is set but no relay user",
                ));
            }
            if self.relay_password.is_some() {
                return Err(bad(
                    "relay_oauth2_token_file",
                    "give a password or an OAuth2 token file, not both",
                ));
            }
            std::fs::metadata(file).map_err(|e| {
                bad(
                    "relay_oauth2_token_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
        } else if self.relay_user.is_some() && self.relay_password.is_none() {
            return Err(bad(
                "relay_password",
                "relay_user is set: give the password in MAILSPOOL_RELAY_PASSWORD or relay_password_file (or an OAuth2 token in relay_oauth2_token_file)",
            ));
        }
        Ok(())
    }

    /// The relay's CA file, client certificate and EHLO name: readable,
    /// parseable, and set only together with what they need.
    fn validate_relay_identity(&self) -> Result<(), ConfigError> {
        let pem = |key: &'static str, file: &PathBuf| -> Result<Vec<u8>, ConfigError> {
            let bytes = std::fs::read(file)
                .map_err(|e| bad(key, format!("cannot read {}: {e}", file.display())))?;
            if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
                return Err(bad(key, format!("{} is not PEM", file.display())));
            }
            Ok(bytes)
        };
        if let Some(file) = &self.relay_ca_file {
            let bytes = pem("relay_ca_file", file)?;
            lettre::transport::smtp::client::Certificate::from_pem(&bytes)
                .map_err(|e| bad("relay_ca_file", format!("{}: {e}", file.display())))?;
        }
        match (&self.relay_client_cert_file, &self.relay_client_key_file) {
            (Some(cert), Some(key)) => {
                let (c, k) = (
                    pem("relay_client_cert_file", cert)?,
                    pem("relay_client_key_file", key)?,
                );
                lettre::transport::smtp::client::Identity::from_pem(&c, &k).map_err(|e| {
                    bad(
                        "relay_client_cert_file",
                        format!("{} with {}: {e}", cert.display(), key.display()),
                    )
                })?;
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(bad(
                    "relay_client_key_file",
                    "relay_client_cert_file needs its key",
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "relay_client_cert_file",
                    "relay_client_key_file needs its certificate",
                ))
            }
        }
        if let Some(name) = &self.relay_helo_name {
            let literal = name.starts_with('[') && name.ends_with(']');
            let domain = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !(literal || domain) {
                return Err(bad(
                    "relay_helo_name",
                    format!("`{name}` is neither a domain name (mail.example.com) nor an address literal ([192.0.2.7])"),
                ));
            }
        }
        if self.relay.is_none() {
            let set = [
                ("relay_ca_file", self.relay_ca_file.is_some()),
                (
                    "relay_client_cert_file",
                    self.relay_client_cert_file.is_some(),
                ),
                ("relay_helo_name", self.relay_helo_name.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                return Err(bad(key, "set without a relay"));
            }
        }
        Ok(())
    }

    /// The relay, parsed (call after `validate`).
    pub fn relay_url(&self) -> Option<RelayUrl> {
        self.relay.as_deref().and_then(|r| RelayUrl::parse(r).ok())
    }

    /// The effective TLS policy.
    pub fn effective_relay_tls(&self) -> RelayTls {
        match (self.relay_tls, self.relay_url()) {
            (Some(t), _) => t,
            (None, Some(url)) if url.is_loopback() => RelayTls::Opportunistic,
            _ => RelayTls::Verify,
        }
    }
}

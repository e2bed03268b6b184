//! A relay's URL and TLS level.

use serde::{Deserialize, Serialize};

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

//! Checking every setting once, at start: the first problem stops it,
//! naming the setting.

use std::net::SocketAddr;

use super::{bad, Config, ConfigError};

impl Config {
    /// Checks every setting; the first problem stops the start.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let positive = [
            ("relay_max_connections", self.relay_max_connections as u64),
            ("lease_batch", self.lease_batch as u64),
            ("lease_timeout_ms", self.lease_timeout_ms),
            ("smtp_timeout_ms", self.smtp_timeout_ms),
            ("retry_base_ms", self.retry_base_ms),
            ("retry_cap_ms", self.retry_cap_ms),
            ("max_attempts", u64::from(self.max_attempts)),
            ("max_age_secs", self.max_age_secs),
            ("max_recipients", self.max_recipients as u64),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("max_batch_items", self.max_batch_items as u64),
            ("cache_capacity_bytes", self.cache_capacity_bytes),
            ("segment_bytes", self.segment_bytes),
            ("event_retention_secs", self.event_retention_secs),
            ("event_retention_bytes", self.event_retention_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(bad(name, "must be greater than 0"));
            }
        }
        if self.workers == Some(0) {
            return Err(bad("workers", "must be greater than 0"));
        }
        if self.retry_cap_ms < self.retry_base_ms {
            return Err(bad("retry_cap_ms", "must be at least retry_base_ms"));
        }
        if self.max_message_bytes > 64 * 1024 * 1024 {
            return Err(bad("max_message_bytes", "at most 64 MiB"));
        }
        if let Some(domain) = &self.message_id_domain {
            let a_labels = crate::intake::message::domain_a_label("message_id_domain", domain)
                .map_err(|e| bad("message_id_domain", e.reason))?;
            self.message_id_domain = Some(a_labels);
        }
        if self.lease_batch > 10_000 {
            return Err(bad("lease_batch", "at most 10000"));
        }
        for c in &self.suppress_classes {
            use crate::model::BounceClass as B;
            match B::parse(c) {
                None => {
                    let names: Vec<_> = B::ALL.iter().map(|c| c.name()).collect();
                    return Err(bad(
                        "suppress_classes",
                        format!("`{c}` is not a bounce class (one of {})", names.join(", ")),
                    ));
                }
                Some(B::RelayAuth | B::Throttled | B::Temporary) => {
                    return Err(bad(
                        "suppress_classes",
                        format!("`{c}` is never the recipient's fault and never bounces: it cannot suppress an address"),
                    ));
                }
                Some(_) => {}
            }
        }
        self.validate_relays()?;
        self.validate_webhooks()?;
        crate::intake::message::dkim::signers(&self.dkim).map_err(|e| bad("dkim", e))?;
        if self.metrics_listen != "off" && self.metrics_listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "metrics_listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:9090 (or `off`)",
                    self.metrics_listen
                ),
            ));
        }
        if self.congestion_critical_age_secs < self.congestion_warn_age_secs {
            return Err(bad(
                "congestion_critical_age_secs",
                "must be at least congestion_warn_age_secs",
            ));
        }
        if self.congestion_transactional_critical_wait_secs
            < self.congestion_transactional_warn_wait_secs
        {
            return Err(bad(
                "congestion_transactional_critical_wait_secs",
                "must be at least congestion_transactional_warn_wait_secs",
            ));
        }
        if self.congestion_critical_eta_secs < self.congestion_warn_eta_secs {
            return Err(bad(
                "congestion_critical_eta_secs",
                "must be at least congestion_warn_eta_secs",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| bad("log_level", e.to_string()))?;
        self.validate_security()
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        if self.insecure_no_auth && !self.clients.is_empty() {
            return Err(bad(
                "insecure_no_auth",
                "contradicts the configured [[clients]]: remove one of them",
            ));
        }
        if !self.listen.ip().is_loopback() && self.clients.is_empty() && !self.insecure_no_auth {
            return Err(bad(
                "listen",
                format!(
                    "{} is not a loopback address and no [[clients]] are configured: \
                     add clients (`mailspool token create`) or pass --insecure-no-auth",
                    self.listen
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.clients {
            c.validate()
                .map_err(|e| bad("clients", format!("client `{}`: {e}", c.name)))?;
            if !seen.insert(format!("name {}", c.name)) {
                return Err(bad(
                    "clients",
                    format!("client `{}` is listed twice", c.name),
                ));
            }
            // One credential, one client: a pasted hash must not give a
            // second client's roles.
            let credentials = [
                c.token_sha256
                    .as_ref()
                    .map(|h| format!("token {}", h.to_ascii_lowercase())),
                c.cert_subject.as_ref().map(|s| format!("subject {s}")),
            ];
            for cred in credentials.into_iter().flatten() {
                if !seen.insert(cred.clone()) {
                    let what = cred.split(' ').next().unwrap_or_default();
                    return Err(bad(
                        "clients",
                        format!("client `{}` has the same {what} as another client", c.name),
                    ));
                }
            }
            if c.cert_subject.is_some() && self.tls_client_ca_file.is_none() {
                return Err(bad(
                    "tls_client_ca_file",
                    format!(
                        "client `{}` has a cert_subject: mTLS needs tls_client_ca_file",
                        c.name
                    ),
                ));
            }
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => return Err(bad("tls_key_file", "tls_cert_file is set without it")),
            (None, Some(_)) => return Err(bad("tls_cert_file", "tls_key_file is set without it")),
            _ => {}
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(bad(
                "tls_client_ca_file",
                "mTLS needs tls_cert_file and tls_key_file",
            ));
        }
        if !(16_384..=16_777_215).contains(&self.grpc_max_frame_bytes) {
            return Err(bad(
                "grpc_max_frame_bytes",
                "must be between 16384 and 16777215 (RFC 9113, SETTINGS_MAX_FRAME_SIZE)",
            ));
        }
        for (name, v) in [
            ("grpc_stream_window_bytes", self.grpc_stream_window_bytes),
            (
                "grpc_connection_window_bytes",
                self.grpc_connection_window_bytes,
            ),
        ] {
            if !(65_535..=2_147_483_647).contains(&v) {
                return Err(bad(
                    name,
                    "must be between 65535 and 2147483647 (RFC 9113 flow-control windows)",
                ));
            }
        }
        if self.grpc_max_concurrent_streams == 0 {
            return Err(bad("grpc_max_concurrent_streams", "must be greater than 0"));
        }
        for (name, v) in [
            ("grpc_request_timeout_ms", self.grpc_request_timeout_ms),
            ("grpc_max_connections", self.grpc_max_connections as u64),
            ("grpc_handshake_timeout_ms", self.grpc_handshake_timeout_ms),
        ] {
            if v == 0 {
                return Err(bad(name, "must be greater than 0"));
            }
        }
        Ok(())
    }
}

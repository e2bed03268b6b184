//! The settings' tests.

use super::*;

mod general {
    use super::*;

    #[test]
    fn relay_urls() {
        type Case<'a> = (&'a str, Result<(&'a str, u16, bool), ()>);
        let cases: &[Case] = &[
            (
                "smtp://mail.example.com",
                Ok(("mail.example.com", 25, false)),
            ),
            ("smtp://127.0.0.1:2525", Ok(("127.0.0.1", 2525, false))),
            (
                "smtps://mail.example.com",
                Ok(("mail.example.com", 465, true)),
            ),
            ("smtp://[::1]:25", Ok(("::1", 25, false))),
            ("http://x", Err(())),
            ("smtp://user:pw@host", Err(())),
            ("smtp://host:notaport", Err(())),
            ("host:25", Err(())),
        ];
        for (input, want) in cases {
            let got = RelayUrl::parse(input).map(|u| (u.host.clone(), u.port, u.implicit_tls));
            match want {
                Ok((h, p, t)) => assert_eq!(got, Ok((h.to_string(), *p, *t)), "{input}"),
                Err(()) => assert!(got.is_err(), "{input} should fail"),
            }
        }
    }

    #[test]
    fn one_credential_belongs_to_one_client() {
        let entry = |name: &str, hash: char| {
            crate::intake::auth::ClientConfig::with_token(
                name,
                hash.to_string().repeat(64),
                &[crate::intake::auth::Role::Enqueue],
            )
        };
        let mut c = Config {
            clients: vec![entry("a", 'a'), entry("b", 'b')],
            ..Config::default()
        };
        c.validate().unwrap();
        c.clients[1].token_sha256 = Some("A".repeat(64));
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting, "clients");
        assert!(e.reason.contains("same token"), "{e}");
        c.clients[1] = entry("a", 'b');
        assert!(c.validate().unwrap_err().reason.contains("twice"));
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = Config {
            retry_base_ms: 10,
            retry_cap_ms: 5,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "retry_cap_ms");
        let mut c = Config {
            relay: Some("ftp://x".into()),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "relay");
        let mut c = Config {
            lease_batch: 0,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "lease_batch");
        let mut c = Config {
            relay: Some("smtp://h".into()),
            relay_user: Some("u".into()),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "relay_password");
        c.relay_password = Some(Secret("hunter2-secret".into()));
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "Debug shows no secret"
        );
        assert!(Config::from_toml("nonsense_key = 1").is_err());
        let mut c = Config::from_toml("relay = \"smtp://127.0.0.1:25\"\nmax_attempts = 3").unwrap();
        c.validate().unwrap();
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.relay_set()[0].effective_tls(), RelayTls::Opportunistic);
        c.relay = Some("smtp://mail.example.com".into());
        assert_eq!(c.relay_set()[0].effective_tls(), RelayTls::Verify);
    }

    /// The same settings as flat keys (every older file) and in sections.
    #[test]
    fn sections_and_flat_keys_mean_the_same() {
        let flat = Config::from_toml(
            "relay = \"smtp://r.example:25\"\nrelay_max_connections = 4\nlease_batch = 8\n\
             congestion_warn_age_secs = 60\ngrpc_max_connections = 10\nmax_spool_bytes = 5\n\
             retry_base_ms = 7\nmax_attempts = 3\nlog_format = \"json\"\n",
        )
        .unwrap();
        let sections = Config::from_toml(
            "[relay]\nrelay = \"smtp://r.example:25\"\nmax_connections = 4\n\
             [spool]\nmax_spool_bytes = 5\n[limits]\nlease_batch = 8\n\
             [congestion]\nwarn_age_secs = 60\n[grpc]\nmax_connections = 10\n\
             [retry]\nbase_ms = 7\nmax_attempts = 3\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        let table = |c: &Config| toml::Table::try_from(c).unwrap();
        assert_eq!(table(&flat), table(&sections));
        assert_eq!(sections.relay_max_connections, 4);
        assert_eq!(sections.retry_base_ms, 7);
        assert_eq!(sections.log_format, LogFormat::Json);
        assert_ne!(table(&flat), table(&Config::default()));
    }

    #[test]
    fn a_wrong_key_in_a_section_is_named_with_its_section() {
        let e = Config::from_toml("[relay]\nmax_conections = 4\n").unwrap_err();
        assert!(e.to_string().contains("`max_conections` in [relay]"), "{e}");
        let e = Config::from_toml("lease_batch = 1\n[limits]\nlease_batch = 2\n").unwrap_err();
        assert!(e.to_string().contains("`lease_batch` is set twice"), "{e}");
        // A flat key that does not exist is refused as before.
        assert!(Config::from_toml("lease_bach = 1\n").is_err());
    }

    #[test]
    fn the_threshold_fixture_is_the_default_configuration() {
        assert_eq!(
            Config::default().thresholds(),
            crate::observe::congestion::Thresholds::default()
        );
    }
}

#[cfg(test)]
/// The start a TOML text makes fails on `setting`, saying `words`.
fn refused(toml: &str, setting: &str, words: &str) -> ConfigError {
    let e = Config::from_toml(toml)
        .and_then(|mut c| c.validate().map(|_| c))
        .expect_err(toml);
    assert_eq!(e.setting, setting, "{toml}: {e}");
    assert!(e.to_string().contains(words), "{toml}: {e}");
    e
}

mod relay_identity_tests {
    use super::*;

    /// Each bad relay setting stops the start naming itself.
    #[test]
    fn bad_relay_settings_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let relay = "relay = \"smtp://mail.example.com:587\"\n";
        let cases = [
            (format!("{relay}relay_tls = \"bogus\"\n"), "config", "bogus"),
            (
                format!("{relay}relay_password = \"hunter2\"\n"),
                "relay_password",
                "MAILSPOOL_RELAY_PASSWORD",
            ),
            (
                format!("{relay}relay_helo_name = \"my host\"\n"),
                "relay_helo_name",
                "neither a domain",
            ),
            (
                format!("{relay}relay_helo_name = \"vm..x\"\n"),
                "relay_helo_name",
                "neither a domain",
            ),
            (
                format!(
                    "{relay}relay_ca_file = {:?}\n",
                    not_pem.display().to_string()
                ),
                "relay_ca_file",
                "not PEM",
            ),
            (
                format!(
                    "{relay}relay_client_cert_file = {:?}\n",
                    not_pem.display().to_string()
                ),
                "relay_client_key_file",
                "needs its key",
            ),
            (
                "relay_helo_name = \"mail.example.com\"\n".to_string(),
                "relay_helo_name",
                "without a relay",
            ),
            (
                format!(
                    "{relay}relay_user = \"u\"\nrelay_oauth2_token_file = \"/nonexistent/token\"\n"
                ),
                "relay_oauth2_token_file",
                "cannot read",
            ),
        ];
        for (toml, setting, words) in cases {
            refused(&toml, setting, words);
        }
        // `required`, the old spelling, is `verify`.
        let mut c = Config::from_toml(&format!("{relay}relay_tls = \"required\"\n")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.relay_set()[0].effective_tls(), RelayTls::Verify);
    }
}

mod relays_tests {
    use super::*;

    const TWO: &str = r#"
[[relays]]
name = "ses"
url = "smtps://email-smtp.eu-west-1.amazonaws.com"
user = "AKIA"
password_env = "MAILSPOOL_TEST_SES_PASSWORD"
rate_per_second = 14
lanes = ["transactional", "normal"]

[[relays]]
name = "backup"
url = "smtp://127.0.0.1:2525"
priority = 1
weight = 2
"#;

    #[test]
    fn two_providers_parse_with_their_defaults() {
        std::env::set_var("MAILSPOOL_TEST_SES_PASSWORD", "s3cret");
        let mut c = Config::from_toml(TWO).unwrap();
        c.validate().unwrap();
        let set = c.relay_set();
        assert_eq!(set.len(), 2);
        assert_eq!(set[0].password.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(set[0].effective_tls(), RelayTls::Verify);
        assert_eq!(set[1].effective_tls(), RelayTls::Opportunistic);
        assert_eq!(
            (set[1].priority, set[1].weight, set[1].max_connections),
            (1, 2, 16)
        );
        assert_eq!(
            c.effective_workers(),
            32,
            "workers follow the relays' connections"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        // The single relay is one named `default`.
        let mut one =
            Config::from_toml("relay = \"smtp://127.0.0.1:25\"\nrelay_rate_per_second = 5")
                .unwrap();
        one.validate().unwrap();
        let set = one.relay_set();
        assert_eq!(
            (set[0].name.as_str(), set[0].rate_per_second),
            ("default", 5)
        );
    }

    /// Each bad `[[relays]]` setting stops the start naming the relay and field.
    #[test]
    fn bad_relays_name_the_relay_and_the_field() {
        let relay = |extra: &str| {
            format!("[[relays]]\nname = \"a\"\nurl = \"smtp://127.0.0.1:25\"\n{extra}")
        };
        let cases = [
            (relay("tls = \"maybe\"\n"), "config", "maybe"),
            (
                relay("password = \"hunter2\"\n"),
                "relays",
                "password_file or password_env",
            ),
            (relay("user = \"u\"\n"), "relays", "`password`"),
            (relay("weight = 0\n"), "relays", "`weight`"),
            (
                relay("lanes = [\"urgent\"]\n"),
                "relays",
                "unknown lane `urgent`",
            ),
            (relay("senders = [\"nobody\"]\n"), "relays", "`senders`"),
            (
                relay("password_env = \"MAILSPOOL_TEST_UNSET_VAR\"\nuser = \"u\"\n"),
                "relays",
                "not set",
            ),
            (
                format!("{}{}", relay(""), relay("")),
                "relays",
                "two relays are named `a`",
            ),
            (
                relay("senders = [\"@shop.example\"]\n"),
                "relays",
                "from every sender",
            ),
            (relay("lanes = [\"bulk\"]\n"), "relays", "`transactional`"),
            (
                format!("relay = \"smtp://h:25\"\n{}", relay("")),
                "relays",
                "not both",
            ),
            (
                relay("url = \"smtps://h\"\n").replace("url = \"smtp://127.0.0.1:25\"\n", "")
                    + "tls = \"none\"\n",
                "relays",
                "contradicts",
            ),
        ];
        for (toml, setting, words) in cases {
            let e = refused(&toml, setting, words);
            let whole_set = ["not both", "every sender", "transactional", "two relays"];
            if setting == "relays" && !whole_set.iter().any(|w| words.contains(w)) {
                assert!(e.to_string().contains("relay `a`"), "{toml}: {e}");
            }
        }
    }
}

/// Each bad `[[webhooks]]` setting stops the start naming the endpoint and
/// the field; a good one reads its secret (never shown).
#[test]
fn bad_webhooks_name_the_endpoint_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("secret");
    std::fs::write(&good, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "whsec_c2hvcnQ=").unwrap();
    let hook = |url: &str, extra: &str| {
        format!(
            "[[webhooks]]\nname = \"crm\"\nurl = \"{url}\"\nsecret_file = \"{}\"\n{extra}",
            good.display()
        )
    };
    let ok = "https://hooks.example.com/mail";
    let cases = [
        (
            hook("http://hooks.example.com/mail", ""),
            "plain http only to a loopback",
        ),
        (hook("ftp://127.0.0.1/x", ""), "scheme `ftp`"),
        (hook("not a url", ""), "`url`"),
        (
            hook(ok, "events = [\"opened\"]\n"),
            "`opened` is not an event type",
        ),
        (hook(ok, "timeout_ms = 0\n"), "`timeout_ms`"),
        (hook(ok, "secret = \"whsec_abc\"\n"), "use secret_file"),
        (
            hook(ok, "").replace(&good.display().to_string(), "/nonexistent/secret"),
            "cannot read /nonexistent/secret",
        ),
        (
            hook(ok, "").replace(&good.display().to_string(), &short.display().to_string()),
            "5-byte key",
        ),
        (
            format!("{}{}", hook(ok, ""), hook(ok, "")),
            "two webhooks are named `crm`",
        ),
    ];
    for (toml, words) in cases {
        let e = refused(&toml, "webhooks", words);
        if !words.starts_with("two") && !words.contains("secret_file") {
            assert!(e.to_string().contains("webhook `crm`"), "{toml}: {e}");
        }
    }
    let mut c = Config::from_toml(&hook(
        "http://127.0.0.1:8080/h",
        "events = [\"delivered\", \"bounced\"]\n",
    ))
    .unwrap();
    c.validate().unwrap();
    let w = &c.webhooks[0];
    assert_eq!(w.secret.as_ref().map(|k| k.0.len()), Some(24));
    assert!(!format!("{w:?}").contains("MfKQ"), "{w:?}");
    assert_eq!(
        w.kinds(),
        Some(vec![
            crate::model::EventKind::Delivered,
            crate::model::EventKind::Bounced
        ])
    );
    assert_eq!(
        (w.timeout_ms, w.max_backoff_secs, w.failing_after_secs),
        (10_000, 60, 600)
    );
}

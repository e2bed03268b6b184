//! The command line's own tests.

use super::*;
use crate::cli::queue::QueueCommand;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("mailspool").chain(args.iter().copied()))
}

#[test]
fn queue_flags_parse() {
    let cli = parse(&[
        "queue",
        "cancel",
        "--state",
        "in-flight",
        "--lane",
        "bulk",
        "--domain",
        "example.org",
        "--min-age",
        "10m",
        "--max-age",
        "2h",
        "--limit",
        "5",
        "--yes",
    ])
    .unwrap();
    let Some(Command::Queue(QueueArgs {
        command: QueueCommand::Cancel(a),
    })) = cli.command
    else {
        panic!("not queue cancel");
    };
    let f = a.filter.to_pb(a.state);
    assert_eq!(
        ac::describe_filter(&f),
        "state=in-flight lane=bulk domain=example.org min-age=10m max-age=2h"
    );
    assert_eq!((a.flags.limit, a.flags.yes, a.ids.len()), (5, true, 0));
    let Some(Command::Queue(QueueArgs {
        command: QueueCommand::Purge(p),
    })) = parse(&["queue", "purge", "--older-than", "7d"])
        .unwrap()
        .command
    else {
        panic!("not queue purge");
    };
    assert_eq!(p.older_than, 7 * 86400);
}

#[test]
fn queue_flags_refused() {
    for args in [
        &["queue", "requeue", "--state", "dead"][..],
        &["queue", "purge"],
        &["queue", "list", "--min-age", "ten"],
        &["queue", "list", "--page-size", "1001"],
        &["queue", "cancel", "id1", "--all-messages"],
        &["queue", "pause", "--lane", "urgent"],
        &["queue", "transfer"],
        &["stats", "--watch", "--json"],
        &["stats", "--count", "3"],
        &["stats", "--watch", "--interval", "0"],
    ] {
        assert!(parse(args).is_err(), "{args:?} should be refused");
    }
    for args in [
        &["stats", "--watch", "--interval", "2s", "--count", "3"][..],
        &["stats", "--json"],
        &["top-domains", "--limit", "5", "--lane", "bulk", "--json"],
        &["queue", "resume"],
        &["queue", "pause", "--lane", "bulk", "--lane", "normal"],
        &["queue", "retry", "a", "b", "--json"],
    ] {
        assert!(parse(args).is_ok(), "{args:?} should parse");
    }
}

/// Each flag's help shows the default `Config::default()` has (one source).
#[test]
fn the_help_shows_the_defaults_of_the_config() {
    let d = Config::default();
    let mut cmd = command();
    let serve = cmd.find_subcommand_mut("serve").unwrap();
    let help = |id: &str| {
        serve
            .get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default()
    };
    assert!(help("lease_batch").ends_with(&format!("[default: {}]", d.lease_batch)));
    assert!(help("listen").ends_with(&format!("[default: {}]", d.listen)));
    assert!(help("log_level").ends_with(&format!("[default: {}]", d.log_level)));
    assert!(
        help("congestion_transactional_warn_wait_secs").ends_with(&format!(
            "[default: {}]",
            d.congestion_transactional_warn_wait_secs
        )),
        "{}",
        help("congestion_transactional_warn_wait_secs")
    );
    // A setting without a default keeps its own text, once.
    assert_eq!(help("workers").matches("[default:").count(), 1);
}

/// Every setting's flag reads `MAILSPOOL_<KEY>`, derived from its key.
#[test]
fn each_setting_reads_its_environment_variable() {
    let mut cmd = command();
    let serve = cmd.find_subcommand_mut("serve").unwrap();
    let env = |id: &str| {
        serve
            .get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().to_string())
    };
    assert_eq!(env("lease_batch").as_deref(), Some("MAILSPOOL_LEASE_BATCH"));
    assert_eq!(
        env("relay_password_file").as_deref(),
        Some("MAILSPOOL_RELAY_PASSWORD_FILE")
    );
    assert_eq!(
        env("insecure_no_auth").as_deref(),
        Some("MAILSPOOL_INSECURE_NO_AUTH")
    );
    assert_eq!(env("config").as_deref(), Some("MAILSPOOL_CONFIG"));
    let settings = serve
        .get_arguments()
        .filter(|a| crate::config::is_setting(a.get_id().as_str()))
        .count();
    assert!(settings >= 45, "{settings} settings");
    assert!(serve
        .get_arguments()
        .filter(|a| crate::config::is_setting(a.get_id().as_str()))
        .all(|a| a.get_env().is_some()));
}

/// Flags over the file (in sections), the file over the defaults.
#[test]
fn flags_override_a_sectioned_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailspool.toml");
    std::fs::write(&path, "[limits]\nlease_batch = 8\nmax_recipients = 7\n").unwrap();
    let matches = command()
        .try_get_matches_from([
            "mailspool",
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--lease-batch",
            "16",
        ])
        .unwrap();
    use clap::FromArgMatches;
    let Some(Command::Serve(args)) = Cli::from_arg_matches(&matches).unwrap().command else {
        panic!("not serve")
    };
    let c = args.into_config().unwrap();
    assert_eq!((c.lease_batch, c.max_recipients), (16, 7));
    assert_eq!(c.max_attempts, Config::default().max_attempts);
}

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

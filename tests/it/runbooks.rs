//! The runbooks cannot drift from the alerts or from the binary: every
//! alert in deploy/prometheus/alerts.yml links its runbook, which exists
//! with the sections an on-call engineer looks for, and every `mailspool
//! …` command a runbook names parses with the binary's own command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// (alert, its runbook_url), each rule in the file (an alert may have
/// several rules: one runbook).
fn alerts() -> Vec<(String, Option<String>)> {
    let text = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            out.push((name.trim().to_string(), None));
        } else if let Some(url) = line.strip_prefix("runbook_url:") {
            let url = url.trim().trim_matches('"').to_string();
            out.last_mut().expect("runbook_url inside a rule").1 = Some(url);
        }
    }
    out
}

const SECTIONS: [&str; 5] = [
    "## First three commands",
    "## What to do",
    "## Verify recovery",
    "## For the postmortem",
    "```",
];

#[test]
fn every_alert_links_a_runbook_that_exists() {
    let alerts = alerts();
    assert!(alerts.len() >= 16, "{alerts:?}");
    for (alert, url) in &alerts {
        let file = format!("docs/runbooks/{alert}.md");
        let url = url
            .as_deref()
            .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
        assert!(
            url.ends_with(&file),
            "{alert}: runbook_url {url} is not {file}"
        );
        let text = std::fs::read_to_string(root().join(&file))
            .unwrap_or_else(|e| panic!("{alert}: {file}: {e}"));
        assert!(text.starts_with(&format!("# {alert}\n")), "{file}: title");
        for section in SECTIONS {
            assert!(text.contains(section), "{file} lacks {section:?}");
        }
    }
    // The index names every runbook there is.
    let index = std::fs::read_to_string(root().join("docs/runbooks/README.md")).unwrap();
    for entry in std::fs::read_dir(root().join("docs/runbooks")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name != "README.md" {
            assert!(
                index.contains(&name),
                "docs/runbooks/README.md lacks {name}"
            );
        }
    }
}

/// The `mailspool …` commands of a Markdown text: each line of a fenced
/// block that starts with it (after an optional `$ `), and each inline
/// code span that does (true: in prose, where naming a subcommand without
/// its required arguments is fine); cut at a pipe, `&&`, a redirection or
/// a comment.
fn commands(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            let t = t.strip_prefix("$ ").unwrap_or(t);
            if t.starts_with("mailspool ") || t == "mailspool" {
                out.push((t.to_string(), false));
            }
        } else {
            for (i, span) in line.split('`').enumerate() {
                if i % 2 == 1 && span.starts_with("mailspool ") {
                    out.push((span.to_string(), true));
                }
            }
        }
    }
    out.into_iter()
        .map(|(c, inline)| {
            let mut end = c.len();
            for stop in [" | ", " && ", " # ", " > ", " 2>", " ; ", " || "] {
                if let Some(i) = c.find(stop) {
                    end = end.min(i);
                }
            }
            (c[..end].trim().to_string(), inline)
        })
        .collect()
}

/// Shell words: spaces split, quotes group (no escapes or expansions).
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut started = false;
    for c in command.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
            }
            (None, ' ') => {
                if started || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                started = false;
            }
            (None, c) => word.push(c),
        }
    }
    if started || !word.is_empty() {
        out.push(word);
    }
    out
}

#[test]
fn every_command_a_runbook_names_parses() {
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(root().join("docs/runbooks")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for (c, inline) in commands(&text) {
            *checked.entry(name.clone()).or_default() += 1;
            if let Err(e) = mailspool::cli::command().try_get_matches_from(words(&c)) {
                use clap::error::ErrorKind::*;
                let named_only = matches!(
                    e.kind(),
                    MissingRequiredArgument | DisplayHelpOnMissingArgumentOrSubcommand
                );
                if e.kind() != DisplayHelp && !(inline && named_only) {
                    bad.push(format!("{name}: `{c}`: {}", e.render()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // Each runbook names commands (a runbook without any would not help).
    for entry in std::fs::read_dir(root().join("docs/runbooks")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name != "README.md" {
            assert!(
                checked.get(&name).copied().unwrap_or(0) >= 3,
                "{name}: {checked:?}"
            );
        }
    }
    // The check itself rejects what drifted.
    for drifted in [
        "mailspool queue pause bulk",
        "mailspool queue list --state stuck",
        "mailspool relays pause ses",
        "mailspool stats --wach",
    ] {
        assert!(
            mailspool::cli::command()
                .try_get_matches_from(words(drifted))
                .is_err(),
            "{drifted} parsed"
        );
    }
    assert_eq!(
        commands("x `mailspool stats --json | jq .queued` y\n```sh\n$ mailspool queue list --lane bulk # oldest\n```\n"),
        [
            ("mailspool stats --json".to_string(), true),
            ("mailspool queue list --lane bulk".to_string(), false)
        ]
    );
    assert_eq!(
        words("mailspool suppression add --reason 'bad list' a@b.example"),
        [
            "mailspool",
            "suppression",
            "add",
            "--reason",
            "bad list",
            "a@b.example"
        ]
    );
}

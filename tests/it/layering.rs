//! The layering rules of ARCHITECTURE.md ("Layering"), read from the
//! source: rooms import only rooms below them, the protobuf types stay in
//! the gRPC layer, the CLI and the harness, and the spool knows nothing of
//! gRPC, Prometheus or lettre.

use std::path::{Path, PathBuf};

/// The rooms of `src/`, lowest first: a room may import only rooms before it.
const ORDER: &[&str] = &[
    "model", "tls", "spool", "intake", "observe", "config", "delivery", "webhooks", "grpc",
    "console", "server", "harness", "cli",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// (file, its room, its code without comments) for every file of `src/`.
fn rooms() -> Vec<(String, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().to_string();
            let room = rel.split('/').next().unwrap().trim_end_matches(".rs");
            let code: String = std::fs::read_to_string(&p)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            (rel.clone(), room.to_string(), code)
        })
        .collect()
}

/// The rooms of ours a file names as `crate::<room>`.
fn imports(code: &str) -> Vec<String> {
    let mut out: Vec<String> = code
        .match_indices("crate::")
        .map(|(i, _)| {
            code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn rooms_import_only_rooms_below_them() {
    let rank = |r: &str| ORDER.iter().position(|x| *x == r);
    let mut wrong = Vec::new();
    let files = rooms();
    assert!(files.len() > 50, "read {} files", files.len());
    for (file, room, code) in &files {
        let Some(mine) = rank(room) else { continue };
        for to in imports(code) {
            if rank(&to).is_some_and(|theirs| theirs > mine) {
                wrong.push(format!("{file} imports crate::{to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up:\n{}",
        wrong.join("\n")
    );
    // Every room is in ORDER (a new folder must take its place there).
    for (file, room, _) in &files {
        let known = rank(room).is_some() || ["lib", "main"].contains(&room.as_str());
        assert!(known, "{file}: room {room} is not in ORDER");
    }
}

#[test]
fn protobuf_stays_in_the_grpc_layer_the_cli_and_the_harness() {
    // The console is a client of the admin API like the CLI: it calls the
    // service's own methods with their request and response messages.
    let wrong: Vec<_> = rooms()
        .into_iter()
        .filter(|(_, room, code)| {
            !["grpc", "console", "cli", "harness", "lib", "main"].contains(&room.as_str())
                && imports(code).iter().any(|i| i == "pb")
        })
        .map(|(file, _, _)| file)
        .collect();
    assert!(wrong.is_empty(), "crate::pb used in {wrong:?}");
}

#[test]
fn the_spool_and_the_model_know_no_grpc_prometheus_or_lettre() {
    let mut wrong = Vec::new();
    for (file, room, code) in rooms() {
        if room != "spool" && room != "model" {
            continue;
        }
        for krate in ["tonic", "prost", "prometheus_client", "lettre", "axum"] {
            if code.contains(&format!("{krate}::")) {
                wrong.push(format!("{file} uses {krate}"));
            }
        }
        if room == "model" {
            let ours: Vec<_> = imports(&code)
                .into_iter()
                .filter(|i| i != "model")
                .collect();
            if !ours.is_empty() {
                wrong.push(format!(
                    "{file} imports {ours:?} (the model depends on nothing of ours)"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

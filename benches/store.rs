//! criterion micro-benchmarks of the spool on 2 KiB messages: append+commit
//! (one message, and a group of 100), lease, ack, retry; and message building
//! (2 KiB of text; text and HTML with an inline image and a 100 KiB PDF);
//! DKIM signing at send time (rsa-sha256, ed25519-sha256; keys from openssl).
//!
//! `cargo bench --bench store`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mailspool::delivery::scheduler::Scheduler;
use mailspool::intake::message::{build, dkim, AttachmentInput, EmailInput, Limits};
use mailspool::model::{now_ms, Lane, NewMessage, Outcome};
use mailspool::spool::{Store, StoreOptions};

const LIMITS: Limits = Limits {
    max_recipients: 100,
    max_message_bytes: 10 << 20,
    message_id_domain: String::new(),
};

fn email() -> EmailInput {
    EmailInput {
        from: "bench@example.com".into(),
        to: vec!["user@example.org".into()],
        subject: "bench".into(),
        text_body: body_2k(),
        ..EmailInput::default()
    }
}

/// 2 KiB of text in 72-character lines, like real mail.
pub fn body_2k() -> String {
    let line = format!(
        "{}\r\n",
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod t"
    );
    line.repeat(2048 / line.len() + 1)[..2048].to_string()
}

fn message() -> NewMessage {
    build(&email(), Lane::Normal, "", 0, &LIMITS, now_ms()).unwrap()
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            cache_capacity_bytes: 64 << 20,
            segment_bytes: 64 << 20,
            idempotency_window: Duration::from_secs(86_400),
            delivered_retention: Duration::from_secs(3_600),
            observer: std::sync::Arc::new(mailspool::spool::Unobserved),
            suppression: mailspool::spool::SuppressionPolicy::default(),
            event_retention: mailspool::spool::EventRetention::default(),
        },
    )
    .unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let m = message();

    let mut g = c.benchmark_group("store");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    g.bench_function("build 2KiB message", |b| b.iter(message));
    let with_files = EmailInput {
        html_body: format!("<p>{}</p><img src=\"cid:logo\">", body_2k()),
        attachments: vec![
            AttachmentInput {
                filename: "invoice.pdf".into(),
                content: (0..100 * 1024).map(|i| (i * 7 % 251) as u8).collect(),
                ..AttachmentInput::default()
            },
            AttachmentInput {
                content_id: "logo".into(),
                content_type: "image/png".into(),
                content: vec![0x89; 4096],
                ..AttachmentInput::default()
            },
        ],
        ..email()
    };
    g.bench_function("build 2KiB text+html, 4KiB inline image, 100KiB PDF", |b| {
        b.iter(|| build(&with_files, Lane::Normal, "", 0, &LIMITS, now_ms()).unwrap())
    });
    // DKIM at send time: the cost per message a delivery worker pays.
    for (alg, args) in [
        (
            "rsa-sha256",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
        ("ed25519-sha256", &["-algorithm", "ed25519"][..]),
    ] {
        let key = dir.path().join(format!("{alg}.pem"));
        let made = std::process::Command::new("openssl")
            .args(["genpkey", "-out"])
            .arg(&key)
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            eprintln!("openssl is missing: no DKIM benchmark");
            continue;
        }
        let pem = std::fs::read(&key).unwrap();
        let algorithm = dkim::Algorithm::parse(alg).unwrap();
        let signer = dkim::Signer::new("example.com", "s1", algorithm, &pem, &[]).unwrap();
        let signers = vec![signer];
        let raw = build(
            &EmailInput {
                from: "bench@example.com".into(),
                ..email()
            },
            Lane::Normal,
            "",
            0,
            &LIMITS,
            now_ms(),
        )
        .unwrap()
        .raw;
        g.bench_function(format!("DKIM {alg} sign a 2KiB message"), |b| {
            b.iter(|| dkim::sign_with(&signers, &raw, 1_800_000_000).len())
        });
    }
    g.bench_function("append+commit 1", |b| {
        b.iter(|| rt.block_on(store.append(vec![m.clone()])).unwrap())
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("append+commit group of 100", |b| {
        b.iter_batched(
            || vec![m.clone(); 100],
            |v| rt.block_on(store.append(v)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    // Lease, then end the lease with ack or retry: 32 messages per lease.
    let sched = Scheduler::new(store.clone(), 32, Duration::from_secs(60));
    g.throughput(Throughput::Elements(32));
    g.bench_function("lease 32 + ack", |b| {
        b.iter_batched(
            || rt.block_on(store.append(vec![m.clone(); 32])).unwrap(),
            |_| {
                let lease = sched.try_lease().expect("due messages");
                let outcomes = lease
                    .messages
                    .iter()
                    .map(|m| (m.id, Outcome::Ack))
                    .collect();
                rt.block_on(sched.complete(&lease, outcomes)).unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("lease 32 + retry", |b| {
        b.iter_batched(
            || rt.block_on(store.append(vec![m.clone(); 32])).unwrap(),
            |_| {
                let lease = sched.try_lease().expect("due messages");
                let later = now_ms() + 3_600_000;
                let outcomes = lease
                    .messages
                    .iter()
                    .map(|m| {
                        (
                            m.id,
                            Outcome::Retry {
                                due_ms: later,
                                error: "451".into(),
                            },
                        )
                    })
                    .collect();
                rt.block_on(sched.complete(&lease, outcomes)).unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    store.close();
}

criterion_group!(store, benches);
criterion_main!(store);

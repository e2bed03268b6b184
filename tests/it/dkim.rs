//! DKIM signatures made as messages leave, verified by dkimpy (an
//! independent verifier) with the public key as its DNS TXT record would
//! hold it, for rsa-sha256 and ed25519-sha256; a changed body must fail.

use std::process::Command;

use mailspool::intake::message::dkim::DkimConfig;
use mailspool::pb;

use crate::mime::capture_with;
use crate::support::*;

/// A private key (PEM file) and its DNS record (`v=DKIM1; k=...; p=...`).
fn key(dir: &std::path::Path, algorithm: &str) -> (std::path::PathBuf, String) {
    let file = dir.join(format!("{algorithm}.pem"));
    let mut gen = Command::new("openssl");
    gen.args(["genpkey", "-out"]).arg(&file);
    match algorithm {
        "rsa" => gen.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        _ => gen.args(["-algorithm", "ed25519"]),
    };
    assert!(gen
        .status()
        .expect("openssl (apt-get install openssl)")
        .success());
    let der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&file)
        .output()
        .unwrap()
        .stdout;
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let record = match algorithm {
        // RFC 6376: the SubjectPublicKeyInfo; RFC 8463: the raw 32 bytes.
        "rsa" => format!("v=DKIM1; k=rsa; p={}", b64(&der)),
        _ => format!("v=DKIM1; k=ed25519; p={}", b64(&der[der.len() - 32..])),
    };
    (file, record)
}

#[cfg_attr(
    not(have_dkimpy),
    ignore = "needs python3 with aiosmtpd, dkimpy and pynacl (pip install)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_dkimpy_for_rsa_and_ed25519() {
    let keys = tempdir();
    for (algorithm, name) in [("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")] {
        let (file, record) = key(keys.path(), algorithm);
        let txt = format!("s1._domainkey.example.com={record}");
        let cap = capture_with(&["--dkim", &txt]).await;
        let dir = tempdir();
        let mut cfg = config(dir.path(), cap.relay());
        cfg.dkim = vec![DkimConfig {
            domain: "Example.com".into(),
            selector: "s1".into(),
            key_file: file,
            algorithm: name.into(),
            headers: vec![],
        }];
        let s = TestServer::start(cfg).await;
        let mut utf8 = request("Grüße — 你好");
        let e = utf8.email.as_mut().unwrap();
        e.html_body = "<p>Grüße</p>   \n\n\n".into();
        e.attachments = vec![pb::Attachment {
            filename: "a.pdf".into(),
            content: vec![1, 2, 3, 250],
            ..Default::default()
        }];
        let mut other = request("not ours");
        other.email.as_mut().unwrap().from = "x@other.example".into();
        for r in [request("plain"), utf8, other] {
            s.enqueue(r).await.unwrap();
        }
        s.wait_delivered(3).await;
        s.shutdown().await;
        let got = cap.received();
        assert_eq!(got.len(), 3);
        for (m, eml) in &got {
            let text = String::from_utf8_lossy(eml);
            let subject = m["headers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h[0] == "Subject")
                .unwrap()[1]
                .clone();
            if subject == "not ours" {
                assert!(!text.contains("DKIM-Signature"), "{text}");
                assert_eq!(m["dkim"], false);
                continue;
            }
            assert!(text.starts_with("DKIM-Signature: v=1;"), "{text}");
            assert!(text.contains(&format!("a={name};")), "{text}");
            assert_eq!(m["dkim"], true, "{name} {subject}: {text}");
            assert_eq!(m["dkim_tampered"], false, "a changed body must fail");
        }
    }
}

/// A key that cannot be used stops the start, naming the entry.
#[tokio::test]
async fn an_unusable_dkim_key_stops_the_start() {
    let dir = tempdir();
    let bad = dir.path().join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for (file, want) in [
        (dir.path().join("missing.pem"), "cannot read key_file"),
        (bad, "key_file"),
    ] {
        let mut cfg = config(dir.path(), None);
        cfg.dkim = vec![DkimConfig {
            domain: "example.com".into(),
            selector: "s1".into(),
            key_file: file,
            algorithm: "rsa-sha256".into(),
            headers: vec![],
        }];
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.setting, "dkim");
        assert!(e.to_string().contains(want), "{e}");
        assert!(
            e.to_string().contains("[[dkim]] domain `example.com`"),
            "{e}"
        );
    }
}

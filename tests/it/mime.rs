//! Messages as receivers read them: every kind mailspool builds goes to
//! aiosmtpd (a relay nobody here wrote), Python's email package reads the
//! bytes it received with its strict policy (tests/peers/capture.py), and
//! SpamAssassin judges their header structure. Ignored where python3 has
//! no aiosmtpd or SpamAssassin is missing; under CI=true both are on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mailspool::pb;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::*;

/// The capture relay: aiosmtpd, writing N.eml and N.json into `dir`.
pub(crate) struct Capture {
    _child: Child,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
}

async fn capture(smtputf8: bool) -> Capture {
    let flags: &[&str] = if smtputf8 { &["--smtputf8"] } else { &[] };
    capture_with(flags).await
}

/// capture.py with its flags (`--starttls CERT KEY`, `--auth U:P`, ...).
pub(crate) async fn capture_with(flags: &[&str]) -> Capture {
    let dir = tempdir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/capture.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg("--dir").arg(dir.path()).args(flags);
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs tests/peers/capture.py (pip install aiosmtpd)");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
        .await
        .expect("capture.py prints its port")
        .unwrap()
        .expect("capture.py printed nothing: is aiosmtpd installed?");
    Capture {
        _child: child,
        port: line.trim().parse().expect("a port"),
        dir,
    }
}

impl Capture {
    pub(crate) fn relay(&self) -> Option<String> {
        Some(format!("smtp://127.0.0.1:{}", self.port))
    }

    /// Every RCPT TO it answered, in order: (address, reply).
    pub(crate) fn rcpts(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.dir.path().join("rcpt.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, r)| (a.to_string(), r.to_string()))
            .collect()
    }

    /// What it received so far, in order: (summary, bytes).
    pub(crate) fn received(&self) -> Vec<(Value, Vec<u8>)> {
        let mut n = 1;
        let mut all = Vec::new();
        while let Ok(json) = std::fs::read(self.dir.path().join(format!("{n}.json"))) {
            let eml = std::fs::read(self.dir.path().join(format!("{n}.eml"))).unwrap();
            all.push((serde_json::from_slice(&json).unwrap(), eml));
            n += 1;
        }
        all
    }
}

fn header<'a>(m: &'a Value, name: &str) -> Vec<&'a str> {
    m["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

fn parts<'a>(m: &'a Value, content_type: &str) -> Vec<&'a Value> {
    m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["content_type"] == content_type)
        .collect()
}

fn email(case: &str) -> pb::Email {
    pb::Email {
        from: "Alerts <alerts@example.com>".into(),
        to: vec!["user@example.org".into()],
        subject: format!("case {case}"),
        extra_headers: vec![pb::Header {
            name: "X-Case".into(),
            value: case.into(),
        }],
        ..Default::default()
    }
}

fn attachment(filename: &str, content_type: &str, content: &[u8]) -> pb::Attachment {
    pb::Attachment {
        filename: filename.into(),
        content_type: content_type.into(),
        content: content.to_vec(),
        ..Default::default()
    }
}

const PDF: &[u8] = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n";

const INVITE: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//mailspool//test//EN\r\n\
METHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:42@example.com\r\nDTSTAMP:20261201T100000Z\r\n\
DTSTART:20261202T100000Z\r\nDTEND:20261202T110000Z\r\nSUMMARY:Review\r\n\
ORGANIZER:mailto:alerts@example.com\r\nATTENDEE;RSVP=TRUE:mailto:user@example.org\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";

/// Every kind of message of the issue, by its X-Case.
fn cases() -> Vec<(&'static str, pb::Email)> {
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR fake image bytes";
    let pdf = PDF;
    let long_words = vec!["segment"; 250].join(" "); // 2,000 octets
    vec![
        (
            "text",
            pb::Email {
                text_body: "Your code is 123456.\nIt expires in 10 minutes.\n".into(),
                ..email("text")
            },
        ),
        (
            "html",
            pb::Email {
                html_body: "<html><body><p>Your code is <b>123456</b>.</p></body></html>".into(),
                ..email("html")
            },
        ),
        (
            "both",
            pb::Email {
                text_body: "Your code is 123456.".into(),
                html_body: "<p>Your code is <b>123456</b>.</p>".into(),
                ..email("both")
            },
        ),
        (
            "inline",
            pb::Email {
                text_body: "Our logo".into(),
                html_body: "<p><img src=\"cid:logo@example.com\" alt=\"logo\"></p>".into(),
                attachments: vec![pb::Attachment {
                    content_id: "logo@example.com".into(),
                    ..attachment("logo.png", "", png)
                }],
                ..email("inline")
            },
        ),
        (
            "two-files",
            pb::Email {
                text_body: "Your invoice and the usage report are attached.".into(),
                attachments: vec![
                    attachment("invoice.pdf", "", pdf),
                    attachment("usage.csv", "text/csv", b"day,messages\n2026-11-30,1200\n"),
                ],
                ..email("two-files")
            },
        ),
        (
            "invite",
            pb::Email {
                text_body: "You are invited to the review.".into(),
                html_body: "<p>You are invited to the review.</p>".into(),
                attachments: vec![attachment(
                    "invite.ics",
                    "text/calendar; method=REQUEST; charset=UTF-8",
                    INVITE.as_bytes(),
                )],
                ..email("invite")
            },
        ),
        (
            "filename",
            pb::Email {
                text_body: "Anbei die Rechnung.".into(),
                attachments: vec![attachment("Rechnung März 2026 – Nr. 7.pdf", "", pdf)],
                ..email("filename")
            },
        ),
        (
            "utf8",
            pb::Email {
                from: "Jörg Müller <alerts@example.com>".into(),
                to: vec!["Zoë Ångström <user@example.org>".into()],
                reply_to: "Служба поддержки <help@example.com>".into(),
                subject: ["Grüße — 你好 ✓"; 6].join(" "),
                text_body: "Grüße aus München — 你好 ✓\n".repeat(40),
                html_body: "<p>Grüße aus München — 你好 ✓</p>".into(),
                attachments: vec![attachment("Übersicht.txt", "", "Größe: 7 ✓\n".as_bytes())],
                ..email("utf8")
            },
        ),
        (
            "idn",
            pb::Email {
                from: "Info <info@münchen.example>".into(),
                to: vec!["kunde@bücher.example".into()],
                text_body: "Hallo".into(),
                ..email("idn")
            },
        ),
        (
            "long-header",
            pb::Email {
                text_body: "A long header".into(),
                extra_headers: vec![
                    pb::Header {
                        name: "X-Case".into(),
                        value: "long-header".into(),
                    },
                    pb::Header {
                        name: "X-Long".into(),
                        value: long_words.clone(),
                    },
                ],
                ..email("long-header")
            },
        ),
        (
            "repeated",
            pb::Email {
                text_body: "Repeated headers".into(),
                extra_headers: vec![
                    pb::Header {
                        name: "X-Case".into(),
                        value: "repeated".into(),
                    },
                    pb::Header {
                        name: "X-Tag".into(),
                        value: "billing".into(),
                    },
                    pb::Header {
                        name: "X-Tag".into(),
                        value: "monthly".into(),
                    },
                ],
                headers: [("X-Map".to_string(), "kept".to_string())].into(),
                ..email("repeated")
            },
        ),
        (
            "envelope",
            pb::Email {
                from: "No Reply <noreply@example.com>".into(),
                envelope_from: "bounces+user=example.org@example.com".into(),
                text_body: "Bounces go elsewhere".into(),
                ..email("envelope")
            },
        ),
    ]
}

/// Every line ends in CRLF and is at most 998 octets.
fn assert_wire_lines(case: &str, eml: &[u8]) {
    let lines: Vec<&[u8]> = eml.split(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let line = match line.strip_suffix(b"\r") {
            Some(l) => l,
            None => {
                assert!(i + 1 == lines.len(), "{case}: line {i} ends in a bare LF");
                line
            }
        };
        assert!(!line.contains(&b'\r'), "{case}: a bare CR in line {i}");
        assert!(
            line.len() <= 998,
            "{case}: line {i} is {} octets",
            line.len()
        );
    }
}

/// What every received message must be, read by the strict parser: no
/// defect (but the two Python's email package reports for any UTF-8
/// address, RFC 6532, whatever its policy: the `smtputf8` case), MIME 1.0,
/// one Date, and the Message-ID Enqueue answered.
fn assert_read_cleanly(sent: &Sent, m: &Value) {
    let case = sent.case;
    assert_eq!(m["strict_error"], Value::Null, "{case}: {m}");
    let defects: Vec<&Value> = m["header_defects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            let d = d.as_str().unwrap();
            !(case == "smtputf8"
                && d.starts_with("To: ")
                && (d.contains("NonASCIILocalPartDefect") || d.contains("UndecodableBytesDefect")))
        })
        .collect();
    assert!(defects.is_empty(), "{case}: {m}");
    for p in m["parts"].as_array().unwrap() {
        assert_eq!(p["defects"], serde_json::json!([]), "{case}: {p}");
    }
    assert_eq!(header(m, "MIME-Version"), ["1.0"], "{case}");
    assert_eq!(header(m, "Date").len(), 1, "{case}");
    assert_eq!(
        header(m, "Message-ID"),
        [format!("<{}>", sent.message_id)],
        "{case}"
    );
}

struct Sent {
    case: &'static str,
    message_id: String,
}

/// Enqueues every case and a raw message (bare LF line ends, no Date or
/// Message-ID).
async fn enqueue_all(s: &TestServer) -> Vec<Sent> {
    let mut sent = Vec::new();
    for (case, email) in cases() {
        let r = s
            .enqueue(pb::EnqueueRequest {
                email: Some(email),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        sent.push(Sent {
            case,
            message_id: r.message_id,
        });
    }
    let raw = b"From: Alerts <alerts@example.com>\nTo: user@example.org\nSubject: case raw\n\
X-Case: raw\nMIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\nraw body\n";
    let r = s
        .enqueue(pb::EnqueueRequest {
            raw: Some(pb::RawMessage {
                data: raw.to_vec(),
                envelope_from: "alerts@example.com".into(),
                envelope_to: vec!["user@example.org".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.message_id.ends_with("@example.com"), "{}", r.message_id);
    sent.push(Sent {
        case: "raw",
        message_id: r.message_id,
    });
    sent
}

/// Sends every case to aiosmtpd and returns them by case with what it
/// made of them and their bytes.
async fn send_all(cap: &Capture) -> Vec<(Sent, Value, Vec<u8>)> {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), cap.relay())).await;
    let sent = enqueue_all(&s).await;
    let n = sent.len();
    let all_in = wait_until(Duration::from_secs(30), || async {
        cap.received().len() >= n
    })
    .await;
    assert!(all_in, "aiosmtpd received {} of {n}", cap.received().len());
    s.shutdown().await;
    let mut received = cap.received();
    sent.into_iter()
        .map(|sent| {
            let at = received
                .iter()
                .position(|(m, _)| header(m, "X-Case").first() == Some(&sent.case))
                .unwrap_or_else(|| panic!("{} not received", sent.case));
            let (m, eml) = received.remove(at);
            (sent, m, eml)
        })
        .collect()
}

/// The same messages through Postfix's smtp-sink, its dumps read by the
/// same strict parser.
#[cfg_attr(
    not(have_aiosmtpd),
    ignore = "needs python3 with aiosmtpd (pip install aiosmtpd)"
)]
#[cfg_attr(
    not(have_smtp_sink),
    ignore = "needs smtp-sink: apt-get install postfix"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_sink_takes_every_kind_and_a_strict_parser_reads_its_dumps() {
    let bin = crate::smtp_sink::smtp_sink();
    let dir = tempdir();
    let dump = dir.path().join("dump");
    let (_sink, port) = crate::smtp_sink::start_sink(&bin, &dump, &[]).await;
    let relay = Some(format!("smtp://127.0.0.1:{port}"));
    let s = TestServer::start(config(&dir.path().join("data"), relay)).await;
    let sent = enqueue_all(&s).await;
    s.wait_delivered(sent.len() as u64).await;
    s.shutdown().await;
    let files = || -> Vec<PathBuf> {
        std::fs::read_dir(&dump)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let all = wait_until(Duration::from_secs(10), || async {
        files().len() == sent.len()
    })
    .await;
    assert!(all, "smtp-sink dumped {} of {}", files().len(), sent.len());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/capture.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--parse")
        .args(files())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for sent in &sent {
        let case = sent.case;
        let m = parsed
            .iter()
            .find(|m| header(m, "X-Case").first() == Some(&case))
            .unwrap_or_else(|| panic!("{case} not in smtp-sink's dumps"));
        assert_read_cleanly(sent, m);
        if case == "envelope" {
            let prelude = m["prelude"].to_string();
            assert!(
                prelude.contains("bounces+user=example.org@example.com"),
                "{prelude}"
            );
        }
    }
}

#[cfg_attr(
    not(have_aiosmtpd),
    ignore = "needs python3 with aiosmtpd (pip install aiosmtpd)"
)]
#[tokio::test]
async fn every_kind_of_message_reads_without_a_defect_in_a_strict_parser() {
    let cap = capture(false).await;
    for (sent, m, eml) in send_all(&cap).await {
        let case = sent.case;
        assert_read_cleanly(&sent, &m);
        assert!(header(&m, "Return-Path").is_empty(), "{case}");
        assert_wire_lines(case, &eml);
        assert!(eml.is_ascii(), "{case}: 8-bit bytes on the wire");
        let options = m["mail_options"].as_array().unwrap();
        assert!(
            !options.iter().any(|o| o == "SMTPUTF8"),
            "{case}: {options:?}"
        );
        let top = m["parts"][0]["content_type"].as_str().unwrap();
        match case {
            "text" | "raw" | "idn" | "long-header" | "repeated" | "envelope" => {
                assert_eq!(top, "text/plain", "{case}")
            }
            "html" => assert_eq!(top, "text/html"),
            "both" => {
                assert_eq!(top, "multipart/alternative");
                assert_eq!(parts(&m, "text/plain").len(), 1);
                assert_eq!(parts(&m, "text/html").len(), 1);
            }
            "inline" => {
                let img = parts(&m, "image/png");
                assert_eq!(img[0]["content_id"], "<logo@example.com>");
                assert_eq!(img[0]["disposition"], "inline");
                assert_eq!(parts(&m, "multipart/related").len(), 1);
            }
            "two-files" => {
                assert_eq!(top, "multipart/mixed");
                let pdf = parts(&m, "application/pdf");
                assert_eq!(pdf[0]["filename"], "invoice.pdf");
                assert_eq!(pdf[0]["disposition"], "attachment");
                assert_eq!(pdf[0]["bytes"], PDF.len());
                assert_eq!(parts(&m, "text/csv")[0]["filename"], "usage.csv");
            }
            "invite" => {
                assert_eq!(top, "multipart/alternative");
                let cal = parts(&m, "text/calendar");
                assert_eq!(cal[0]["params"]["method"], "REQUEST", "{m}");
                assert_eq!(
                    cal[0]["text"].as_str().unwrap().replace("\r\n", "\n"),
                    INVITE.replace("\r\n", "\n")
                );
            }
            "filename" => {
                let pdf = parts(&m, "application/pdf");
                assert_eq!(pdf[0]["filename"], "Rechnung März 2026 – Nr. 7.pdf");
            }
            "utf8" => {
                assert_eq!(header(&m, "Subject"), [["Grüße — 你好 ✓"; 6].join(" ")]);
                assert_eq!(header(&m, "From"), ["Jörg Müller <alerts@example.com>"]);
                assert_eq!(
                    header(&m, "Reply-To"),
                    ["Служба поддержки <help@example.com>"]
                );
                let text = parts(&m, "text/plain");
                assert!(text[0]["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("Grüße aus München — 你好 ✓"));
                let file = &m["parts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["filename"] == "Übersicht.txt");
                assert!(file.is_some(), "{m}");
            }
            _ => {}
        }
        match case {
            "idn" => {
                assert_eq!(m["mail_from"], "info@xn--mnchen-3ya.example");
                assert_eq!(
                    m["rcpt_tos"],
                    serde_json::json!(["kunde@xn--bcher-kva.example"])
                );
                assert!(sent.message_id.ends_with("@xn--mnchen-3ya.example"));
            }
            "long-header" => {
                let long = vec!["segment"; 250].join(" ");
                assert_eq!(header(&m, "X-Long"), [long.as_str()], "unfolded back");
                let folded = String::from_utf8_lossy(&eml);
                assert!(folded.contains("X-Long: segment segment"), "{folded}");
            }
            "repeated" => {
                assert_eq!(header(&m, "X-Tag"), ["billing", "monthly"]);
                assert_eq!(header(&m, "X-Map"), ["kept"]);
            }
            "envelope" => {
                assert_eq!(m["mail_from"], "bounces+user=example.org@example.com");
                assert_eq!(header(&m, "From"), ["No Reply <noreply@example.com>"]);
            }
            _ => assert!(m["mail_from"].as_str().unwrap().contains('@')),
        }
    }
}

/// SpamAssassin (local tests only) over every message: none of its rules
/// about a message's structure fires.
#[cfg_attr(
    not(have_aiosmtpd),
    ignore = "needs python3 with aiosmtpd (pip install aiosmtpd)"
)]
#[cfg_attr(
    not(have_spamassassin),
    ignore = "needs SpamAssassin (Debian package spamassassin)"
)]
#[tokio::test]
async fn spamassassin_finds_nothing_wrong_with_their_structure() {
    let sa = tool(&[PathBuf::from("/usr/bin/spamassassin")], "spamassassin");
    let cap = capture(false).await;
    let received = send_all(&cap).await;
    let mut mbox = Vec::new();
    for (_, _, eml) in &received {
        mbox.extend_from_slice(b"From MAILER-DAEMON Tue Dec  1 10:00:00 2026\n");
        mbox.extend_from_slice(eml);
        mbox.extend_from_slice(b"\n");
    }
    let path = cap.dir.path().join("all.mbox");
    std::fs::write(&path, &mbox).unwrap();
    let home = tempdir(); // its user_prefs, not the machine's
    let out = Command::new(&sa)
        .args(["-L", "-t", "--mbox"])
        .env("HOME", home.path())
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let verdicts = rules_fired(&report);
    assert_eq!(verdicts.len(), received.len(), "{report}");
    for (sent, _, _) in &received {
        let rules = &verdicts[sent.case];
        let structural: Vec<&String> = rules.iter().filter(|r| is_structure_rule(r)).collect();
        assert!(
            structural.is_empty(),
            "{}: {structural:?} (all: {rules:?})",
            sent.case
        );
    }
    // The rules do look at structure: the same message without its
    // Date and Message-ID is caught.
    let (_, _, eml) = received.iter().find(|(s, _, _)| s.case == "text").unwrap();
    let text = String::from_utf8_lossy(eml)
        .lines()
        .filter(|l| !l.starts_with("Date:") && !l.starts_with("Message-ID:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let broken = format!(
        "From MAILER-DAEMON Tue Dec  1 10:00:00 2026\n{}\n",
        text.replace("X-Case: text", "X-Case: broken")
    );
    std::fs::write(&path, broken).unwrap();
    let out = Command::new(&sa)
        .args(["-L", "-t", "--mbox"])
        .env("HOME", home.path())
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .await
        .unwrap();
    let rules = &rules_fired(&String::from_utf8_lossy(&out.stdout))["broken"];
    assert!(rules.iter().any(|r| r == "MISSING_MID"), "{rules:?}");
    assert!(rules.iter().any(|r| r == "MISSING_DATE"), "{rules:?}");
}

/// The `tests=` list of each X-Spam-Status, in order.
fn rules_fired(report: &str) -> std::collections::HashMap<String, Vec<String>> {
    let unfolded = report.replace("\r\n", "\n").replace("\n\t", " ");
    let mut by_case = std::collections::HashMap::new();
    for message in unfolded.split("From MAILER-DAEMON ").skip(1) {
        let field = |name: &str| {
            message
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or("")
                .to_string()
        };
        let status = field("X-Spam-Status: ");
        let tests = status.split(" tests=").nth(1).unwrap_or("");
        let end = [" autolearn=", " version="]
            .iter()
            .filter_map(|m| tests.find(m))
            .min()
            .unwrap_or(tests.len());
        let rules = tests[..end]
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty() && *t != "none")
            .map(str::to_string)
            .collect();
        by_case.insert(field("X-Case: "), rules);
    }
    by_case
}

/// Rules about the message's form rather than its content: missing or
/// malformed header fields, MIME structure, encodings, line lengths.
fn is_structure_rule(rule: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "MISSING_",
        "INVALID_",
        "MSGID_",
        "MIME_",
        "HEAD_",
        "DATE_IN_",
        "FROM_ILLEGAL",
        "SUBJ_ILLEGAL",
        "TO_MALFORMED",
        "TO_NO_BRKTS",
        "FROM_EXCESS",
        "SUBJ_EXCESS",
        "CTYPE_",
        "BAD_ENC",
    ];
    // Content choices, not defects: an HTML-only message is a case asked for.
    const CONTENT: &[&str] = &["MIME_HTML_ONLY", "MIME_HTML_MOSTLY"];
    PREFIXES.iter().any(|p| rule.starts_with(p)) && !CONTENT.contains(&rule)
}

#[cfg_attr(
    not(have_aiosmtpd),
    ignore = "needs python3 with aiosmtpd (pip install aiosmtpd)"
)]
#[tokio::test]
async fn a_non_ascii_local_part_needs_a_relay_that_offers_smtputf8() {
    let utf8_relay = capture(true).await;
    let plain_relay = capture(false).await;
    let to = "用户@bücher.example";
    for (cap, offers) in [(&utf8_relay, true), (&plain_relay, false)] {
        let dir = tempdir();
        let s = TestServer::start(config(dir.path(), cap.relay())).await;
        let r = s
            .enqueue(pb::EnqueueRequest {
                email: Some(pb::Email {
                    to: vec![to.into()],
                    text_body: "你好".into(),
                    ..email("smtputf8")
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        if offers {
            s.wait_state(&r.id, pb::MessageState::Delivered).await;
            let got = cap.received();
            let m = &got[0].0;
            assert!(
                m["mail_options"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|o| o == "SMTPUTF8"),
                "{m}"
            );
            assert_eq!(
                m["rcpt_tos"],
                serde_json::json!(["用户@xn--bcher-kva.example"])
            );
            assert_eq!(m["strict_error"], Value::Null, "{m}");
        } else {
            let m = s.wait_state(&r.id, pb::MessageState::Dead).await;
            assert_eq!(m.attempts, 1, "not retried: {m:?}");
            assert!(m.last_error.contains("SMTPUTF8"), "{}", m.last_error);
            assert!(
                m.last_error.contains("用户@xn--bcher-kva.example"),
                "{}",
                m.last_error
            );
            assert!(cap.received().is_empty());
        }
        s.shutdown().await;
    }
}

/// Each new field's invalid forms: INVALID_ARGUMENT naming the field,
/// nothing stored.
#[tokio::test]
async fn bad_attachments_headers_and_senders_are_refused_naming_the_field() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let ok_file = attachment("ok.pdf", "", b"%PDF");
    let cases: Vec<(pb::Email, &str)> = vec![
        (
            pb::Email {
                text_body: "x".into(),
                attachments: vec![ok_file.clone(), attachment("a/b.pdf", "", b"x")],
                ..email("bad")
            },
            "email.attachments[1].filename",
        ),
        (
            pb::Email {
                text_body: "x".into(),
                attachments: vec![ok_file.clone(), attachment("a.pdf", "pdf", b"x")],
                ..email("bad")
            },
            "email.attachments[1].content_type",
        ),
        (
            pb::Email {
                text_body: "x".into(),
                extra_headers: vec![pb::Header {
                    name: "List-Unsubscribe".into(),
                    value: format!("<https://example.com/{}>", "u".repeat(2000)),
                }],
                ..email("bad")
            },
            "email.extra_headers[0]",
        ),
        (
            pb::Email {
                text_body: "x".into(),
                subject: "s".repeat(2000),
                ..email("bad")
            },
            "email.subject",
        ),
        (
            pb::Email {
                text_body: "x".into(),
                envelope_from: "not an address".into(),
                ..email("bad")
            },
            "email.envelope_from",
        ),
        (
            pb::Email {
                text_body: "x".into(),
                to: vec!["a@xn--zz.example".into()],
                ..email("bad")
            },
            "email.to[0]",
        ),
    ];
    for (email, field) in cases {
        let err = s
            .enqueue(pb::EnqueueRequest {
                email: Some(email),
                ..Default::default()
            })
            .await
            .expect_err(field);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            err.message()
        );
    }
    let stats = s.stats().await;
    assert_eq!(
        (stats.queued, stats.delivered_total),
        (0, 0),
        "nothing stored"
    );
    s.shutdown().await;
}

/// mailspool → a Postfix of its own (its own config directory, SMTPUTF8 on,
/// as Postfix ships) → aiosmtpd: Postfix takes every kind and passes it on
/// unchanged but for its Received field (no Message-ID or Date of its own),
/// and a non-ASCII local part goes through with SMTPUTF8 end to end.
#[cfg_attr(
    any(not(have_aiosmtpd), not(have_smtp_sink), not(have_root)),
    ignore = "needs aiosmtpd (pip install aiosmtpd), Postfix (apt-get install postfix) and root for a Postfix of its own"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_postfix_passes_every_kind_on_unchanged() {
    use mailspool::harness::bench::postfix::{self, Postfix};
    if let Some(why) = postfix::unavailable() {
        panic!("{why}");
    }
    let cap = capture(true).await;
    let dir = tempdir();
    let pf = Postfix::start(&dir.path().join("postfix"), cap.port, 2).expect("postfix starts");
    let relay = Some(format!("smtp://127.0.0.1:{}", pf.port));
    let s = TestServer::start(config(&dir.path().join("data"), relay)).await;
    let mut sent = enqueue_all(&s).await;
    let r = s
        .enqueue(pb::EnqueueRequest {
            email: Some(pb::Email {
                to: vec!["用户@bücher.example".into()],
                text_body: "你好".into(),
                ..email("smtputf8")
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    sent.push(Sent {
        case: "smtputf8",
        message_id: r.message_id,
    });
    s.wait_delivered(sent.len() as u64).await;
    let n = sent.len();
    let all = wait_until(Duration::from_secs(30), || async {
        cap.received().len() >= n
    })
    .await;
    assert!(all, "Postfix passed on {} of {n}", cap.received().len());
    s.shutdown().await;
    let received = cap.received();
    for sent in &sent {
        let case = sent.case;
        let (m, eml) = received
            .iter()
            .find(|(m, _)| header(m, "X-Case").first() == Some(&case))
            .unwrap_or_else(|| panic!("{case} not passed on"));
        assert_read_cleanly(sent, m);
        assert_eq!(header(m, "Received").len(), 1, "{case}");
        assert_wire_lines(case, eml);
        let smtputf8 = m["mail_options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "SMTPUTF8");
        assert_eq!(
            smtputf8,
            case == "smtputf8",
            "{case}: {}",
            m["mail_options"]
        );
    }
}

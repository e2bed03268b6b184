//! Request validation and message building. The input is the fields of an
//! Email separated by NUL bytes (so they may hold CR and LF):
//! from, to (comma-separated), cc, bcc, reply_to, subject, text, html,
//! envelope_from, then `name=value` headers and `filename|type|content`
//! attachments. Never panics; whatever is accepted has a header section
//! without injected lines, and every line ends in CRLF within 998 octets.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailspool::intake::message::{build, AttachmentInput, EmailInput, Limits, MAX_LINE_OCTETS};
use mailspool::model::Lane;

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let f: Vec<&str> = text.split('\0').collect();
    let get = |i: usize| f.get(i).copied().unwrap_or("").to_string();
    let email = EmailInput {
        from: get(0),
        to: list(&get(1)),
        cc: list(&get(2)),
        bcc: list(&get(3)),
        reply_to: get(4),
        subject: get(5),
        text_body: get(6),
        html_body: get(7),
        envelope_from: get(8),
        extra_headers: f
            .iter()
            .skip(9)
            .filter_map(|h| h.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        attachments: f
            .iter()
            .skip(9)
            .filter(|a| !a.contains('='))
            .filter_map(|a| {
                let mut p = a.splitn(3, '|');
                Some(AttachmentInput {
                    filename: p.next()?.to_string(),
                    content_type: p.next()?.to_string(),
                    content: p.next()?.as_bytes().to_vec(),
                    ..AttachmentInput::default()
                })
            })
            .collect(),
        ..EmailInput::default()
    };
    let limits = Limits {
        max_recipients: 100,
        max_message_bytes: 1 << 20,
        message_id_domain: String::new(),
    };
    if let Ok(m) = build(&email, Lane::Normal, "", 0, &limits, 1_800_000_000_000) {
        let raw = String::from_utf8_lossy(&m.raw);
        let head = raw.split("\r\n\r\n").next().unwrap_or("");
        for line in head.split("\r\n") {
            assert!(
                line.starts_with([' ', '\t']) || line.contains(':'),
                "header injection: {line:?} in {head:?}"
            );
        }
        assert!(
            !head.contains("\nBcc:") && !head.starts_with("Bcc:"),
            "Bcc leaked"
        );
        assert!(!m.envelope_to.is_empty());
        let lines: Vec<&[u8]> = m.raw.split(|&b| b == b'\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let line = match line.strip_suffix(b"\r") {
                Some(l) => l,
                None => {
                    assert!(i + 1 == lines.len(), "line {i} ends in a bare LF");
                    line
                }
            };
            assert!(!line.contains(&b'\r'), "a bare CR in line {i}");
            assert!(
                line.len() <= MAX_LINE_OCTETS,
                "line {i} is {} octets",
                line.len()
            );
        }
    }
});

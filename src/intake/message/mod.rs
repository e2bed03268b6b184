//! Validation of an enqueue request and building its RFC 5322 bytes, once.
//!
//! Pure: no I/O. Every rejection names the field that is wrong, so the API
//! can answer `INVALID_ARGUMENT` with it before anything is written.
//! Every built message is MIME 1.0 with a Date and a Message-ID, lines of
//! at most 998 octets ending in CRLF, domains as A-labels.

mod address;
pub mod dkim;
pub mod header;
mod mime;
mod raw;

use lettre::message::header::{self as hdr, MIME_VERSION_1_0};
use lettre::message::Mailbox;
use rand::Rng;

use crate::model::{Lane, NewMessage};
pub use address::{domain_a_label, mailbox};
pub use header::{section_of, MAX_LINE_OCTETS};
pub use mime::{guess_content_type, AttachmentInput};
pub use raw::{build_raw, RawInput};

/// The caller's message, in the core's own terms (the API converts from proto).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmailInput {
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
    /// The `headers` map, sorted by name.
    pub headers: Vec<(String, String)>,
    /// `extra_headers`, in order; names may repeat.
    pub extra_headers: Vec<(String, String)>,
    pub attachments: Vec<AttachmentInput>,
    /// The SMTP MAIL FROM; empty: the From address.
    pub envelope_from: String,
}

/// The limits validation enforces and the defaults it fills in (from the
/// config).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub max_recipients: usize,
    pub max_message_bytes: usize,
    /// The Message-ID's domain, as A-labels; empty: the sender's domain.
    pub message_id_domain: String,
}

/// Longest accepted idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// How far ahead `not_before` may be.
pub const MAX_NOT_BEFORE_AHEAD_MS: u64 = 366 * 24 * 3600 * 1000;

/// A rejected field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Validates and builds one message. `now_ms` is the wall clock.
pub fn build(
    email: &EmailInput,
    lane: Lane,
    idempotency_key: &str,
    not_before_ms: i64,
    limits: &Limits,
    now_ms: u64,
) -> Result<NewMessage, InvalidField> {
    let not_before_ms = key_and_schedule(idempotency_key, not_before_ms, now_ms)?;
    let input_bytes = input_bytes(email);
    if input_bytes > limits.max_message_bytes {
        return Err(too_big(input_bytes, limits));
    }

    let from = address::mailbox("email.from", &email.from)?;
    let recipients = email.to.len() + email.cc.len() + email.bcc.len();
    if recipients == 0 {
        return Err(invalid(
            "email.to",
            "at least one recipient (to, cc or bcc) is required",
        ));
    }
    if recipients > limits.max_recipients {
        return Err(invalid(
            "email.to",
            format!(
                "{recipients} recipients; at most {} allowed",
                limits.max_recipients
            ),
        ));
    }
    no_line_breaks("email.subject", &email.subject)?;
    if email.text_body.is_empty() && email.html_body.is_empty() {
        return Err(invalid(
            "email.text_body",
            "text_body or html_body is required",
        ));
    }
    let envelope_from = if email.envelope_from.is_empty() {
        from.email.clone()
    } else {
        let mb = address::mailbox("email.envelope_from", &email.envelope_from)?;
        if mb.name.is_some() {
            return Err(invalid(
                "email.envelope_from",
                "an address only (the SMTP MAIL FROM has no display name)",
            ));
        }
        mb.email
    };

    let mut envelope_to = Vec::with_capacity(recipients);
    let mut list = |name: &str, given: &[String]| -> Result<Vec<Mailbox>, InvalidField> {
        let mut boxes = Vec::with_capacity(given.len());
        for (i, value) in given.iter().enumerate() {
            let mb = address::mailbox(&format!("email.{name}[{i}]"), value)?;
            envelope_to.push(mb.email.to_string());
            boxes.push(mb);
        }
        Ok(boxes)
    };
    let (to, cc) = (list("to", &email.to)?, list("cc", &email.cc)?);
    list("bcc", &email.bcc)?; // the envelope only
    let rcpt_fields = Some((to.len(), cc.len()));

    let domain = if limits.message_id_domain.is_empty() {
        from.email.domain()
    } else {
        &limits.message_id_domain
    };
    let message_id = new_message_id(domain);

    let mut h = header::Section::default();
    h.mailboxes("email.from", "From", std::slice::from_ref(&from))?;
    if !to.is_empty() {
        h.mailboxes("email.to", "To", &to)?;
    }
    if !cc.is_empty() {
        h.mailboxes("email.cc", "Cc", &cc)?;
    }
    if !email.reply_to.is_empty() {
        let mb = address::mailbox("email.reply_to", &email.reply_to)?;
        h.mailboxes("email.reply_to", "Reply-To", &[mb])?;
    }
    h.typed("email.subject", hdr::Subject::from(email.subject.clone()))?;
    h.typed(
        "email",
        hdr::Date::new(std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms)),
    )?;
    h.typed("email", hdr::MessageId::from(format!("<{message_id}>")))?;
    for (name, value) in &email.headers {
        h.extra(&format!("email.headers[{name:?}]"), name, value)?;
    }
    for (i, (name, value)) in email.extra_headers.iter().enumerate() {
        h.extra(&format!("email.extra_headers[{i}]"), name, value)?;
    }
    h.typed("email", MIME_VERSION_1_0)?;
    let body = mime::body(&email.text_body, &email.html_body, &email.attachments)?;

    let mut raw = h.into_bytes();
    raw.extend_from_slice(&body.formatted());
    if raw.len() > limits.max_message_bytes {
        return Err(too_big(raw.len(), limits));
    }
    Ok(NewMessage {
        lane,
        sender: from.email.to_string(),
        envelope_from: envelope_from.to_string(),
        envelope_to,
        message_id,
        raw,
        idempotency_key: idempotency_key.to_string(),
        not_before_ms,
        client: String::new(),
        expires_ms: 0,
        bypass_suppression: false,
        rcpt_fields,
        suppressed: Vec::new(),
    })
}

/// A fresh Message-ID (without <>): 128 random bits at `domain`.
fn new_message_id(domain: &str) -> String {
    format!("{:032x}@{domain}", rand::rng().random::<u128>())
}

/// What the caller gave, in bytes: refused before anything is built when
/// it alone is over the limit.
fn input_bytes(email: &EmailInput) -> usize {
    let pairs = |v: &[(String, String)]| v.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    email.from.len()
        + email.reply_to.len()
        + email.subject.len()
        + email.text_body.len()
        + email.html_body.len()
        + email.envelope_from.len()
        + [&email.to, &email.cc, &email.bcc]
            .iter()
            .flat_map(|v| v.iter())
            .map(String::len)
            .sum::<usize>()
        + pairs(&email.headers)
        + pairs(&email.extra_headers)
        + email
            .attachments
            .iter()
            .map(|a| a.content.len() + a.filename.len() + a.content_type.len())
            .sum::<usize>()
}

/// Checks the idempotency key and not_before; returns not_before in ms
/// (0 = due now).
pub(super) fn key_and_schedule(
    idempotency_key: &str,
    not_before_ms: i64,
    now_ms: u64,
) -> Result<u64, InvalidField> {
    if idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(invalid(
            "idempotency_key",
            format!("longer than {MAX_IDEMPOTENCY_KEY_BYTES} bytes"),
        ));
    }
    if idempotency_key.chars().any(char::is_control) {
        return Err(invalid("idempotency_key", "contains control characters"));
    }
    let not_before_ms = u64::try_from(not_before_ms).unwrap_or(0);
    if not_before_ms > now_ms + MAX_NOT_BEFORE_AHEAD_MS {
        return Err(invalid("not_before_unix_ms", "more than 366 days ahead"));
    }
    Ok(if not_before_ms > now_ms {
        not_before_ms
    } else {
        0
    })
}

fn too_big(bytes: usize, limits: &Limits) -> InvalidField {
    invalid(
        "email",
        format!(
            "message is {bytes} bytes; at most max_message_bytes = {} allowed",
            limits.max_message_bytes
        ),
    )
}

/// Every line ending CRLF: bare LF and bare CR become CRLF (one pass; the
/// input comes back as is when it has neither). CR and LF are ASCII, so
/// UTF-8 stays UTF-8.
fn crlf(data: &[u8]) -> Vec<u8> {
    let bare = memchr::memchr2_iter(b'\r', b'\n', data).any(|i| match data[i] {
        b'\n' => i == 0 || data[i - 1] != b'\r',
        _ => data.get(i + 1) != Some(&b'\n'),
    });
    if !bare {
        return data.to_vec();
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn no_line_breaks(field: &str, value: &str) -> Result<(), InvalidField> {
    if value.contains(['\r', '\n']) {
        return Err(invalid(field, "must not contain CR or LF"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const LIMITS: Limits = Limits {
        max_recipients: 3,
        max_message_bytes: 4096,
        message_id_domain: String::new(),
    };

    fn ok_email() -> EmailInput {
        EmailInput {
            from: "Alerts <alerts@example.com>".into(),
            to: vec!["bob@example.org".into()],
            subject: "Hello".into(),
            text_body: "hi".into(),
            ..EmailInput::default()
        }
    }

    fn check(edit: impl Fn(&mut EmailInput), field: &str) {
        let mut e = ok_email();
        edit(&mut e);
        let err = build(&e, Lane::Normal, "", 0, &LIMITS, 1_000).expect_err(field);
        assert_eq!(err.field, field, "{err}");
    }

    #[test]
    fn each_rule_names_its_field() {
        check(|e| e.from = "not an address".into(), "email.from");
        check(|e| e.from = String::new(), "email.from");
        check(
            |e| e.from = "a@example.com\r\nBcc: x@evil.com".into(),
            "email.from",
        );
        check(|e| e.to.clear(), "email.to");
        check(
            |e| e.to = vec!["ok@example.com".into(), "nope".into()],
            "email.to[1]",
        );
        check(|e| e.cc = vec!["@".into()], "email.cc[0]");
        check(|e| e.bcc = vec!["x".into()], "email.bcc[0]");
        check(|e| e.to = vec!["a@b.c".into(); 4], "email.to");
        check(|e| e.reply_to = "bad".into(), "email.reply_to");
        check(|e| e.subject = "a\nb".into(), "email.subject");
        check(|e| e.text_body.clear(), "email.text_body");
        check(|e| e.text_body = "x".repeat(5000), "email");
        check(
            |e| e.headers = vec![("X-Bad Name".into(), "v".into())],
            "email.headers[\"X-Bad Name\"]",
        );
        check(
            |e| e.headers = vec![("X-A:".into(), "v".into())],
            "email.headers[\"X-A:\"]",
        );
        check(
            |e| e.headers = vec![("X-A".into(), "v\r\nBcc: y".into())],
            "email.headers[\"X-A\"]",
        );
        check(
            |e| e.headers = vec![("Message-ID".into(), "<x@y>".into())],
            "email.headers[\"Message-ID\"]",
        );
        check(
            |e| e.headers = vec![("subject".into(), "x".into())],
            "email.headers[\"subject\"]",
        );
    }

    #[test]
    fn key_and_schedule_rules() {
        let e = ok_email();
        let err = build(&e, Lane::Normal, &"k".repeat(300), 0, &LIMITS, 0).unwrap_err();
        assert_eq!(err.field, "idempotency_key");
        let err = build(&e, Lane::Normal, "", i64::MAX, &LIMITS, 0).unwrap_err();
        assert_eq!(err.field, "not_before_unix_ms");
        // past and negative mean now
        assert_eq!(
            build(&e, Lane::Normal, "", -5, &LIMITS, 100)
                .unwrap()
                .not_before_ms,
            0
        );
        assert_eq!(
            build(&e, Lane::Normal, "", 50, &LIMITS, 100)
                .unwrap()
                .not_before_ms,
            0
        );
        assert_eq!(
            build(&e, Lane::Normal, "", 500, &LIMITS, 100)
                .unwrap()
                .not_before_ms,
            500
        );
    }

    #[test]
    fn builds_rfc5322_with_alternative_and_hidden_bcc() {
        let mut e = ok_email();
        e.html_body = "<p>hi</p>".into();
        e.bcc = vec!["secret@example.net".into()];
        e.headers = vec![("X-Campaign".into(), "launch".into())];
        let m = build(&e, Lane::Bulk, "key", 0, &LIMITS, 0).unwrap();
        let raw = String::from_utf8(m.raw.clone()).unwrap();
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(
            raw.contains(&format!("Message-ID: <{}>", m.message_id)),
            "{raw}"
        );
        assert!(raw.contains("Date: "));
        assert!(raw.contains("X-Campaign: launch"));
        assert!(
            !raw.contains("secret@example.net"),
            "Bcc leaked into headers"
        );
        assert_eq!(m.envelope_from, "alerts@example.com");
        assert_eq!(m.envelope_to, vec!["bob@example.org", "secret@example.net"]);
        assert!(m.message_id.ends_with("@example.com"));
        assert!(raw.contains("\r\nMIME-Version: 1.0\r\n"), "{raw}");
    }

    fn built(e: &EmailInput) -> (NewMessage, String) {
        let limits = Limits {
            max_message_bytes: 1 << 20,
            ..LIMITS
        };
        let m = build(e, Lane::Normal, "", 0, &limits, 1_000).unwrap();
        let raw = String::from_utf8(m.raw.clone()).unwrap();
        (m, raw)
    }

    /// Every line ends in CRLF and is at most 998 octets.
    fn assert_lines(raw: &str) {
        for (i, line) in raw.split("\r\n").enumerate() {
            assert!(
                !line.contains(['\r', '\n']),
                "bare CR or LF in line {i}: {raw}"
            );
            assert!(line.len() <= MAX_LINE_OCTETS, "line {i} too long");
        }
    }

    #[test]
    fn single_part_messages_are_mime_with_crlf_lines() {
        for (text, html) in [("one\ntwo\rthree\r\n", ""), ("", "<p>hi</p>\n")] {
            let e = EmailInput {
                text_body: text.into(),
                html_body: html.into(),
                ..ok_email()
            };
            let (_, raw) = built(&e);
            assert!(
                raw.contains("MIME-Version: 1.0\r\nContent-Type: text/"),
                "{raw}"
            );
            assert!(
                raw.contains("Date: Thu, 01 Jan 1970 00:00:01 +0000\r\n"),
                "{raw}"
            );
            assert_lines(&raw);
        }
        let (_, raw) = built(&EmailInput {
            text_body: "one\ntwo\rthree".into(),
            ..ok_email()
        });
        assert!(raw.ends_with("\r\n\r\none\r\ntwo\r\nthree\r\n"), "{raw:?}");
    }

    #[test]
    fn international_domains_are_a_labels_in_envelope_headers_and_message_id() {
        let e = EmailInput {
            from: "Jörg <info@münchen.example>".into(),
            to: vec!["kunde@bücher.example".into()],
            ..ok_email()
        };
        let (m, raw) = built(&e);
        assert!(
            m.message_id.ends_with("@xn--mnchen-3ya.example"),
            "{}",
            m.message_id
        );
        assert_eq!(m.envelope_from, "info@xn--mnchen-3ya.example");
        assert_eq!(m.envelope_to, vec!["kunde@xn--bcher-kva.example"]);
        assert!(raw.is_ascii(), "{raw}");
        assert!(raw.contains("<info@xn--mnchen-3ya.example>"), "{raw}");
        assert!(
            raw.contains("To: <kunde@xn--bcher-kva.example>\r\n"),
            "{raw}"
        );
        let limits = Limits {
            message_id_domain: "mail.example.net".into(),
            ..LIMITS
        };
        let m = build(&e, Lane::Normal, "", 0, &limits, 0).unwrap();
        assert!(m.message_id.ends_with("@mail.example.net"));
        check(|e| e.to = vec!["a@xn--zz.example".into()], "email.to[0]");
    }

    #[test]
    fn long_header_values_fold_or_are_refused_naming_the_field() {
        let (_, raw) = built(&EmailInput {
            subject: vec!["word"; 400].join(" "),
            ..ok_email()
        });
        assert_lines(&raw);
        check(|e| e.subject = "x".repeat(2000), "email.subject");
        check(
            |e| {
                e.extra_headers = vec![
                    ("X-Ok".into(), "v".into()),
                    ("List-Unsubscribe".into(), "x".repeat(2000)),
                ]
            },
            "email.extra_headers[1]",
        );
        check(
            |e| e.extra_headers = vec![("Return-Path".into(), "<a@b.c>".into())],
            "email.extra_headers[0]",
        );
    }

    #[test]
    fn address_fields_put_one_mailbox_a_line_in_angle_brackets() {
        let (_, raw) = built(&EmailInput {
            to: vec!["a@example.org".into(), "Zoë <z@example.org>".into()],
            cc: vec!["c@example.org".into()],
            ..ok_email()
        });
        assert!(
            raw.contains("To: <a@example.org>,\r\n =?utf-8?b?Wm/Dqw==?= <z@example.org>\r\nCc: <c@example.org>\r\n"),
            "{raw}"
        );
    }

    #[test]
    fn envelope_sender_and_repeated_headers() {
        let e = EmailInput {
            envelope_from: "bounces+bob=example.org@example.com".into(),
            extra_headers: vec![
                ("X-Tag".into(), "one".into()),
                ("X-Tag".into(), "two".into()),
            ],
            headers: vec![("X-Map".into(), "m".into())],
            ..ok_email()
        };
        let (m, raw) = built(&e);
        assert_eq!(m.envelope_from, "bounces+bob=example.org@example.com");
        assert_eq!(m.sender, "alerts@example.com");
        assert!(
            raw.contains("X-Map: m\r\nX-Tag: one\r\nX-Tag: two\r\n"),
            "{raw}"
        );
        assert!(
            !raw.contains("bounces+bob"),
            "the envelope sender is not a header"
        );
        check(|e| e.envelope_from = "nope".into(), "email.envelope_from");
        check(
            |e| e.envelope_from = "Bounces <b@example.com>".into(),
            "email.envelope_from",
        );
        check(
            |e| e.extra_headers = vec![("Bad Name".into(), "v".into())],
            "email.extra_headers[0]",
        );
    }

    fn file(name: &str, content_type: &str) -> AttachmentInput {
        AttachmentInput {
            filename: name.into(),
            content_type: content_type.into(),
            content: b"%PDF-1.4 \x00\x01 binary".to_vec(),
            ..AttachmentInput::default()
        }
    }

    #[test]
    fn attachments_inline_images_and_invitations_take_their_places() {
        let logo = AttachmentInput {
            content_id: "logo".into(),
            ..file("", "image/png")
        };
        let invite = AttachmentInput {
            content: b"BEGIN:VCALENDAR\nMETHOD:REQUEST\nEND:VCALENDAR\n".to_vec(),
            ..file("invite.ics", "text/calendar; method=REQUEST; charset=UTF-8")
        };
        let e = EmailInput {
            html_body: "<img src=\"cid:logo\">".into(),
            attachments: vec![
                file("Rechnung März.pdf", ""),
                logo,
                invite,
                file("b.csv", "text/csv"),
            ],
            ..ok_email()
        };
        let (_, raw) = built(&e);
        assert_lines(&raw);
        assert!(raw.is_ascii());
        let at = |needle: &str| {
            raw.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing: {raw}"))
        };
        let mixed = at("Content-Type: multipart/mixed");
        let alternative = at("Content-Type: multipart/alternative");
        let related = at("Content-Type: multipart/related");
        let calendar = at("Content-Type: text/calendar; method=REQUEST");
        assert!(mixed < alternative && alternative < related && related < calendar);
        assert!(raw.contains("Content-ID: <logo>"));
        assert!(raw.contains("Content-Type: application/pdf"));
        assert!(
            raw.contains("filename*0*=utf-8''Rechnung%20M%C3%A4rz.pdf"),
            "{raw}"
        );
        assert!(
            raw.contains("BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains("Content-Disposition: attachment; filename=\"b.csv\""),
            "{raw}"
        );
    }

    #[test]
    fn each_attachment_rule_names_its_field() {
        let with = |a: AttachmentInput| {
            move |e: &mut EmailInput| e.attachments = vec![file("ok.pdf", ""), a.clone()]
        };
        let cases = [
            (file("", "application/pdf"), "filename"),
            (file("../etc/passwd", ""), "filename"),
            (file("a\u{7}b.pdf", ""), "filename"),
            (file("a.pdf", "not a type"), "content_type"),
            (file("a.eml", "multipart/mixed"), "content_type"),
            (
                AttachmentInput {
                    disposition: "sideways".into(),
                    ..file("a.pdf", "")
                },
                "disposition",
            ),
            (
                AttachmentInput {
                    content_id: "has space".into(),
                    ..file("a.png", "")
                },
                "content_id",
            ),
            // an inline image with no HTML body to show it
            (
                AttachmentInput {
                    content_id: "logo".into(),
                    ..file("a.png", "")
                },
                "content_id",
            ),
            (
                AttachmentInput {
                    content: vec![0xff, 0xfe],
                    ..file("i.ics", "text/calendar; method=REQUEST")
                },
                "content",
            ),
        ];
        for (a, field) in cases {
            check(with(a), &format!("email.attachments[1].{field}"));
        }
        let mut e = ok_email();
        e.html_body = "<img src=cid:x>".into();
        let x = AttachmentInput {
            content_id: "x".into(),
            ..file("", "image/png")
        };
        e.attachments = vec![x.clone(), x];
        let err = build(&e, Lane::Normal, "", 0, &LIMITS, 0).unwrap_err();
        assert_eq!(err.field, "email.attachments[1].content_id", "{err}");
        // The built message, attachments included, is held to the limit.
        check(
            |e| {
                e.attachments = vec![AttachmentInput {
                    content: vec![7; 3500],
                    ..file("a.bin", "")
                }]
            },
            "email",
        );
    }
}

//! Validation of an enqueue request and building its RFC 5322 bytes, once.
//!
//! Pure: no I/O. Every rejection names the field that is wrong, so the API
//! can answer `INVALID_ARGUMENT` with it before anything is written.

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::Message;
use rand::Rng;

use crate::model::{Lane, NewMessage};

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
    pub headers: Vec<(String, String)>,
}

/// The limits validation enforces (from the config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_recipients: usize,
    pub max_message_bytes: usize,
}

/// Longest accepted idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// How far ahead `not_before` may be.
pub const MAX_NOT_BEFORE_AHEAD_MS: u64 = 366 * 24 * 3600 * 1000;

/// Headers a caller may not set: the builder owns them, and setting them
/// twice would make an ambiguous or broken message.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "sender",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

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
    limits: Limits,
    now_ms: u64,
) -> Result<NewMessage, InvalidField> {
    let not_before_ms = key_and_schedule(idempotency_key, not_before_ms, now_ms)?;

    let input_bytes = email.from.len()
        + email.reply_to.len()
        + email.subject.len()
        + email.text_body.len()
        + email.html_body.len()
        + [&email.to, &email.cc, &email.bcc]
            .iter()
            .flat_map(|v| v.iter())
            .map(String::len)
            .sum::<usize>()
        + email
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if input_bytes > limits.max_message_bytes {
        return Err(too_big(input_bytes, limits));
    }

    let from = mailbox("email.from", &email.from)?;
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

    let mut builder = Message::builder()
        .from(from.clone())
        .subject(email.subject.clone())
        .date_now();
    // The envelope is given, so lettre does not parse the headers back.
    let mut envelope_to = Vec::with_capacity(recipients);
    for (i, to) in email.to.iter().enumerate() {
        let mb = mailbox(&format!("email.to[{i}]"), to)?;
        envelope_to.push(mb.email.clone());
        builder = builder.to(mb);
    }
    for (i, cc) in email.cc.iter().enumerate() {
        let mb = mailbox(&format!("email.cc[{i}]"), cc)?;
        envelope_to.push(mb.email.clone());
        builder = builder.cc(mb);
    }
    for (i, bcc) in email.bcc.iter().enumerate() {
        let mb = mailbox(&format!("email.bcc[{i}]"), bcc)?;
        envelope_to.push(mb.email.clone());
        builder = builder.bcc(mb);
    }
    let envelope = lettre::address::Envelope::new(Some(from.email.clone()), envelope_to.clone())
        .map_err(|e| invalid("email.to", e.to_string()))?;
    builder = builder.envelope(envelope);
    if !email.reply_to.is_empty() {
        builder = builder.reply_to(mailbox("email.reply_to", &email.reply_to)?);
    }
    for (name, value) in &email.headers {
        let field = format!("email.headers[{name:?}]");
        let header_name = header_name(&field, name)?;
        no_line_breaks(&field, value)?;
        builder = builder.raw_header(HeaderValue::new(header_name, value.clone()));
    }

    let message_id = format!(
        "{:032x}@{}",
        rand::rng().random::<u128>(),
        from.email.domain()
    );
    builder = builder.message_id(Some(format!("<{message_id}>")));

    let message = match (email.text_body.is_empty(), email.html_body.is_empty()) {
        (false, false) => builder.multipart(MultiPart::alternative_plain_html(
            email.text_body.clone(),
            email.html_body.clone(),
        )),
        (false, true) => builder
            .header(ContentType::TEXT_PLAIN)
            .body(email.text_body.clone()),
        _ => builder
            .header(ContentType::TEXT_HTML)
            .body(email.html_body.clone()),
    }
    .map_err(|e| invalid("email", e.to_string()))?;

    let raw = message.formatted();
    if raw.len() > limits.max_message_bytes {
        return Err(too_big(raw.len(), limits));
    }
    Ok(NewMessage {
        lane,
        envelope_from: from.email.to_string(),
        envelope_to: envelope_to.iter().map(|a| a.to_string()).collect(),
        message_id,
        raw,
        idempotency_key: idempotency_key.to_string(),
        not_before_ms,
        client: String::new(),
    })
}

/// Checks the idempotency key and not_before; returns not_before in ms
/// (0 = due now).
fn key_and_schedule(
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

/// A message given as RFC 5322 bytes with its envelope (Transfer between
/// nodes). Stored as given: only the envelope, the size and the presence
/// of a header section are checked.
pub struct RawInput<'a> {
    pub data: &'a [u8],
    pub envelope_from: &'a str,
    pub envelope_to: &'a [String],
}

/// Validates a raw message; the Message-ID is read from its headers.
pub fn build_raw(
    raw: &RawInput<'_>,
    lane: Lane,
    idempotency_key: &str,
    not_before_ms: i64,
    limits: Limits,
    now_ms: u64,
) -> Result<NewMessage, InvalidField> {
    let not_before_ms = key_and_schedule(idempotency_key, not_before_ms, now_ms)?;
    if raw.data.len() > limits.max_message_bytes {
        return Err(invalid(
            "raw.data",
            format!(
                "message is {} bytes; at most max_message_bytes = {} allowed",
                raw.data.len(),
                limits.max_message_bytes
            ),
        ));
    }
    let Some(end) = find(raw.data, b"\r\n\r\n") else {
        return Err(invalid(
            "raw.data",
            "no header section (CRLF CRLF) found: not an RFC 5322 message",
        ));
    };
    let from = if raw.envelope_from.is_empty() {
        String::new() // the null reverse-path
    } else {
        mailbox("raw.envelope_from", raw.envelope_from)?
            .email
            .to_string()
    };
    if raw.envelope_to.is_empty() {
        return Err(invalid(
            "raw.envelope_to",
            "at least one recipient is required",
        ));
    }
    if raw.envelope_to.len() > limits.max_recipients {
        return Err(invalid(
            "raw.envelope_to",
            format!(
                "{} recipients; at most {} allowed",
                raw.envelope_to.len(),
                limits.max_recipients
            ),
        ));
    }
    let mut envelope_to = Vec::with_capacity(raw.envelope_to.len());
    for (i, to) in raw.envelope_to.iter().enumerate() {
        envelope_to.push(
            mailbox(&format!("raw.envelope_to[{i}]"), to)?
                .email
                .to_string(),
        );
    }
    let headers = String::from_utf8_lossy(&raw.data[..end]);
    let message_id = headers
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim().eq_ignore_ascii_case("message-id").then(|| {
                value
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
        })
        .unwrap_or_default();
    Ok(NewMessage {
        lane,
        envelope_from: from,
        envelope_to,
        message_id,
        raw: raw.data.to_vec(),
        idempotency_key: idempotency_key.to_string(),
        not_before_ms,
        client: String::new(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn too_big(bytes: usize, limits: Limits) -> InvalidField {
    invalid(
        "email",
        format!(
            "message is {bytes} bytes; at most max_message_bytes = {} allowed",
            limits.max_message_bytes
        ),
    )
}

fn no_line_breaks(field: &str, value: &str) -> Result<(), InvalidField> {
    if value.contains(['\r', '\n']) {
        return Err(invalid(field, "must not contain CR or LF"));
    }
    Ok(())
}

fn mailbox(field: &str, value: &str) -> Result<Mailbox, InvalidField> {
    no_line_breaks(field, value)?;
    if value.trim().is_empty() {
        return Err(invalid(field, "is empty"));
    }
    value
        .parse::<Mailbox>()
        .map_err(|e| invalid(field, format!("`{value}` is not a mailbox: {e}")))
}

/// RFC 5322 field name: printable ASCII except `:`, and not one we own.
fn header_name(field: &str, name: &str) -> Result<HeaderName, InvalidField> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(invalid(
            field,
            "header name must be printable ASCII without ':' or spaces",
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(invalid(
            field,
            format!("header `{name}` is set by mailspool and cannot be overridden"),
        ));
    }
    HeaderName::new_from_ascii(name.to_string()).map_err(|e| invalid(field, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_recipients: 3,
        max_message_bytes: 4096,
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
        let err = build(&e, Lane::Normal, "", 0, LIMITS, 1_000).expect_err(field);
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
        let err = build(&e, Lane::Normal, &"k".repeat(300), 0, LIMITS, 0).unwrap_err();
        assert_eq!(err.field, "idempotency_key");
        let err = build(&e, Lane::Normal, "", i64::MAX, LIMITS, 0).unwrap_err();
        assert_eq!(err.field, "not_before_unix_ms");
        // past and negative mean now
        assert_eq!(
            build(&e, Lane::Normal, "", -5, LIMITS, 100)
                .unwrap()
                .not_before_ms,
            0
        );
        assert_eq!(
            build(&e, Lane::Normal, "", 50, LIMITS, 100)
                .unwrap()
                .not_before_ms,
            0
        );
        assert_eq!(
            build(&e, Lane::Normal, "", 500, LIMITS, 100)
                .unwrap()
                .not_before_ms,
            500
        );
    }

    #[test]
    fn raw_messages_keep_their_bytes_and_message_id() {
        let to = vec!["b@example.org".to_string()];
        let data = b"Message-ID: <abc@x.example>\r\nSubject: hi\r\n\r\nbody\r\n";
        let raw = RawInput {
            data,
            envelope_from: "a@x.example",
            envelope_to: &to,
        };
        let m = build_raw(&raw, Lane::Bulk, "k", 0, LIMITS, 1_000).unwrap();
        assert_eq!(m.raw, data.to_vec());
        assert_eq!(m.message_id, "abc@x.example");
        assert_eq!(
            (m.envelope_from.as_str(), m.lane),
            ("a@x.example", Lane::Bulk)
        );
        let cases: [(&[u8], &str, Vec<String>, &str); 4] = [
            (b"no header end", "a@x.example", to.clone(), "raw.data"),
            (data, "not an address", to.clone(), "raw.envelope_from"),
            (data, "a@x.example", vec![], "raw.envelope_to"),
            (
                data,
                "a@x.example",
                vec!["bad".into()],
                "raw.envelope_to[0]",
            ),
        ];
        for (data, from, to, field) in cases {
            let raw = RawInput {
                data,
                envelope_from: from,
                envelope_to: &to,
            };
            let e = build_raw(&raw, Lane::Normal, "", 0, LIMITS, 1_000).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let big = vec![b'x'; 5000];
        let raw = RawInput {
            data: &big,
            envelope_from: "",
            envelope_to: &to,
        };
        assert_eq!(
            build_raw(&raw, Lane::Normal, "", 0, LIMITS, 1_000)
                .unwrap_err()
                .field,
            "raw.data"
        );
    }

    #[test]
    fn builds_rfc5322_with_alternative_and_hidden_bcc() {
        let mut e = ok_email();
        e.html_body = "<p>hi</p>".into();
        e.bcc = vec!["secret@example.net".into()];
        e.headers = vec![("X-Campaign".into(), "launch".into())];
        let m = build(&e, Lane::Bulk, "key", 0, LIMITS, 0).unwrap();
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
    }
}

//! A message given as RFC 5322 bytes with its envelope (Transfer between
//! nodes, callers that build MIME themselves): stored as given but for its
//! line endings, which become CRLF, and a Date and Message-ID added when
//! it has none (as a submission server would, RFC 6409 section 8).

use lettre::message::header::{self as hdr, Headers};

use super::header::{field_value, from_domain, section_of, MAX_LINE_OCTETS};
use super::{address, crlf, invalid, key_and_schedule, new_message_id, InvalidField, Limits};
use crate::model::{Lane, NewMessage};

pub struct RawInput<'a> {
    pub data: &'a [u8],
    pub envelope_from: &'a str,
    pub envelope_to: &'a [String],
}

/// Validates a raw message; the Message-ID is read from its headers, or
/// added (and returned).
pub fn build_raw(
    raw: &RawInput<'_>,
    lane: Lane,
    idempotency_key: &str,
    not_before_ms: i64,
    limits: &Limits,
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
    let from = if raw.envelope_from.is_empty() {
        String::new() // the null reverse-path
    } else {
        address::mailbox("raw.envelope_from", raw.envelope_from)?
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
            address::mailbox(&format!("raw.envelope_to[{i}]"), to)?
                .email
                .to_string(),
        );
    }
    let data = crlf(raw.data);
    check_lines(&data)?;
    let Some(section) = section_of(&data) else {
        return Err(invalid(
            "raw.data",
            "no empty line ends the header section: an RFC 5322 message is header fields, \
             an empty line, then the body (which may be empty)",
        ));
    };
    let mut added = Headers::new();
    if field_value(section, "Date").is_none() {
        added.set(hdr::Date::new(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms),
        ));
    }
    let message_id = match field_value(section, "Message-ID") {
        Some(id) => id
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string(),
        None => {
            let domain = if !limits.message_id_domain.is_empty() {
                limits.message_id_domain.clone()
            } else if let Some((_, d)) = from.rsplit_once('@') {
                d.to_string()
            } else {
                from_domain(section).unwrap_or_else(|| "localhost".into())
            };
            let id = new_message_id(&domain);
            added.set(hdr::MessageId::from(format!("<{id}>")));
            id
        }
    };
    let added = added.to_string();
    let data = if !added.is_empty() {
        let mut with = added.into_bytes();
        with.extend_from_slice(&data);
        with
    } else {
        data
    };
    Ok(NewMessage {
        lane,
        sender: from.clone(),
        envelope_from: from,
        envelope_to,
        message_id,
        raw: data,
        idempotency_key: idempotency_key.to_string(),
        not_before_ms,
        client: String::new(),
        expires_ms: 0,
        bypass_suppression: false,
        rcpt_fields: None,
        suppressed: Vec::new(),
    })
}

fn check_lines(data: &[u8]) -> Result<(), InvalidField> {
    let mut start = 0;
    for (n, line) in data.split(|&b| b == b'\n').enumerate() {
        let len = line.len().saturating_sub(1); // without its CR
        if len > MAX_LINE_OCTETS {
            return Err(invalid(
                "raw.data",
                format!(
                    "line {} (at byte {start}) is {len} octets; relays refuse lines over \
                     {MAX_LINE_OCTETS} (RFC 5322 section 2.1.1): fold long header fields, \
                     encode long body lines quoted-printable or base64",
                    n + 1
                ),
            ));
        }
        start += line.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::tests::LIMITS;

    fn raw<'a>(data: &'a [u8], to: &'a [String]) -> RawInput<'a> {
        RawInput {
            data,
            envelope_from: "a@x.example",
            envelope_to: to,
        }
    }

    #[test]
    fn raw_messages_keep_their_bytes_and_message_id() {
        let to = vec!["b@example.org".to_string()];
        let data = b"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <abc@x.example>\r\nSubject: hi\r\n\r\nbody\r\n";
        let m = build_raw(&raw(data, &to), Lane::Bulk, "k", 0, &LIMITS, 1_000).unwrap();
        assert_eq!(m.raw, data.to_vec());
        assert_eq!(m.message_id, "abc@x.example");
        assert_eq!(
            (m.envelope_from.as_str(), m.lane),
            ("a@x.example", Lane::Bulk)
        );
        let cases: [(&[u8], &str, Vec<String>, &str); 5] = [
            (b"no header end", "a@x.example", to.clone(), "raw.data"),
            (data, "not an address", to.clone(), "raw.envelope_from"),
            (data, "a@x.example", vec![], "raw.envelope_to"),
            (
                data,
                "a@x.example",
                vec!["bad".into()],
                "raw.envelope_to[0]",
            ),
            (&[b'x'; 1200], "a@x.example", to.clone(), "raw.data"),
        ];
        for (data, from, to, field) in cases {
            let raw = RawInput {
                data,
                envelope_from: from,
                envelope_to: &to,
            };
            let e = build_raw(&raw, Lane::Normal, "", 0, &LIMITS, 1_000).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let big = vec![b'x'; 5000];
        let e = build_raw(&raw(&big, &to), Lane::Normal, "", 0, &LIMITS, 1_000).unwrap_err();
        assert!(e.reason.contains("max_message_bytes"), "{e}");
    }

    #[test]
    fn bare_line_ends_become_crlf_and_a_date_and_message_id_are_added() {
        let to = vec!["b@example.org".to_string()];
        let data = b"From: A <a@x.example>\nSubject: hi\r\n\nline one\rline two\n";
        let m = build_raw(&raw(data, &to), Lane::Normal, "", 0, &LIMITS, 1_000).unwrap();
        let text = String::from_utf8(m.raw).unwrap();
        assert!(
            text.starts_with("Date: Thu, 01 Jan 1970 00:00:01 +0000\r\nMessage-ID: <"),
            "{text}"
        );
        assert!(m.message_id.ends_with("@x.example"), "{}", m.message_id);
        assert!(text.contains(&format!("<{}>", m.message_id)));
        assert!(
            text.ends_with("From: A <a@x.example>\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n"),
            "{text}"
        );
        // With a null sender the From field's domain is used.
        let r = RawInput {
            envelope_from: "",
            ..raw(data, &to)
        };
        let m = build_raw(&r, Lane::Normal, "", 0, &LIMITS, 1_000).unwrap();
        assert!(m.message_id.ends_with("@x.example"));
        let limits = Limits {
            message_id_domain: "mail.example".into(),
            ..LIMITS
        };
        let m = build_raw(&raw(data, &to), Lane::Normal, "", 0, &limits, 1_000).unwrap();
        assert!(m.message_id.ends_with("@mail.example"));
    }
}

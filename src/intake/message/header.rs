//! The header section, one field at a time: encoded (RFC 2047 words for
//! non-ASCII text), folded at spaces, and refused naming the field when a
//! line would still be longer than a relay accepts.

use lettre::message::header::{self as hdr, Header, HeaderName, HeaderValue, Headers};
use lettre::message::{Mailbox, Mailboxes};

use super::{invalid, no_line_breaks, InvalidField};

/// RFC 5322 section 2.1.1: a line is at most 998 octets before its CRLF.
pub const MAX_LINE_OCTETS: usize = 998;

/// Headers a caller may not set: the builder owns them, and setting them
/// twice would make an ambiguous or broken message. `Return-Path` is the
/// receiving server's to add (RFC 5321 section 4.4).
const RESERVED: &[&str] = &[
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
    "content-disposition",
    "content-id",
    "return-path",
];

/// The encoded header section being built.
#[derive(Default)]
pub struct Section {
    text: String,
}

impl Section {
    /// A typed field (From, To, Date, ...); `field` names it in errors.
    pub fn typed<H: Header>(&mut self, field: &str, header: H) -> Result<(), InvalidField> {
        let mut one = Headers::new();
        one.set(header);
        self.push(field, one)
    }

    /// An address field (From, To, Cc, Reply-To): one mailbox a line, each
    /// in angle brackets, with or without a display name (a bare address
    /// in To is what spam filters score, SpamAssassin's TO_NO_BRKTS_*).
    pub fn mailboxes(
        &mut self,
        field: &str,
        name: &'static str,
        boxes: &[Mailbox],
    ) -> Result<(), InvalidField> {
        let mut encoded = String::new();
        let mut raw = String::new();
        for (i, mb) in boxes.iter().enumerate() {
            if i > 0 {
                encoded.push_str(",\r\n ");
                raw.push_str(", ");
            }
            match &mb.name {
                Some(_) => {
                    // lettre encodes the display name (RFC 2047 when not ASCII).
                    let mut one = Headers::new();
                    one.set(hdr::To::from(Mailboxes::from(mb.clone())));
                    let text = one.to_string();
                    let value = text
                        .strip_prefix("To: ")
                        .and_then(|v| v.strip_suffix("\r\n"))
                        .expect("lettre writes `To: value` CRLF");
                    encoded.push_str(value);
                }
                None => encoded.push_str(&format!("<{}>", mb.email)),
            }
            raw.push_str(&mb.to_string());
        }
        let name = HeaderName::new_from_ascii_str(name);
        let mut one = Headers::new();
        one.insert_raw(HeaderValue::dangerous_new_pre_encoded(name, raw, encoded));
        self.push(field, one)
    }

    /// A caller's field: its name checked, its value unstructured text.
    pub fn extra(&mut self, field: &str, name: &str, value: &str) -> Result<(), InvalidField> {
        let name = header_name(field, name)?;
        no_line_breaks(field, value)?;
        let mut one = Headers::new();
        one.insert_raw(HeaderValue::new(name, value.to_string()));
        self.push(field, one)
    }

    /// Appends the field's encoded lines; refuses (and takes back) a line
    /// over the limit.
    fn push(&mut self, field: &str, one: Headers) -> Result<(), InvalidField> {
        use std::fmt::Write;
        let start = self.text.len();
        write!(self.text, "{one}").expect("writing to a String");
        let long = longest_line(&self.text.as_bytes()[start..]);
        let long = (long > MAX_LINE_OCTETS).then_some(long);
        if let Some(len) = long {
            self.text.truncate(start);
            return Err(invalid(
                field,
                format!(
                    "would be a header line of {len} octets; relays refuse lines over {MAX_LINE_OCTETS} \
                     (RFC 5322 section 2.1.1) and only spaces can be folded: shorten its longest word"
                ),
            ));
        }
        Ok(())
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.text.into_bytes()
    }
}

/// The longest line of CRLF-ended text, in octets without its CRLF.
pub fn longest_line(text: &[u8]) -> usize {
    let mut start = 0;
    let mut longest = 0;
    for end in memchr::memchr_iter(b'\n', text) {
        longest = longest.max(end.saturating_sub(start + 1)); // without CR
        start = end + 1;
    }
    longest.max(text.len() - start)
}

/// RFC 5322 field name: printable ASCII except `:`, and not one we own.
fn header_name(field: &str, name: &str) -> Result<HeaderName, InvalidField> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(invalid(
            field,
            "header name must be printable ASCII without ':' or spaces",
        ));
    }
    if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(invalid(
            field,
            format!("header `{name}` is set by mailspool and cannot be overridden"),
        ));
    }
    HeaderName::new_from_ascii(name.to_string()).map_err(|e| invalid(field, e.to_string()))
}

/// The header section of a message's bytes (without the blank line), or
/// None when there is no blank line.
pub fn section_of(raw: &[u8]) -> Option<&[u8]> {
    if raw.starts_with(b"\r\n") {
        return Some(&raw[..0]);
    }
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|end| &raw[..end + 2])
}

/// The unfolded value of the first field called `name`.
pub fn field_value(section: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(section);
    let mut lines = text.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        if !n.trim().eq_ignore_ascii_case(name) {
            continue;
        }
        let mut value = v.to_string();
        while let Some(next) = lines.next_if(|l| l.starts_with([' ', '\t'])) {
            value.push_str(next);
        }
        return Some(value);
    }
    None
}

/// The From field's (first) address, lowercase.
pub fn from_address(section: &[u8]) -> Option<String> {
    let value = field_value(section, "From")?;
    let addr = match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.trim(),
    };
    addr.contains('@').then(|| addr.trim().to_ascii_lowercase())
}

/// The domain of the From field's (first) address, lowercase.
pub fn from_domain(section: &[u8]) -> Option<String> {
    let addr = from_address(section)?;
    addr.rsplit_once('@').map(|(_, d)| d.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_fold_at_spaces_and_unfoldable_ones_are_refused() {
        let mut s = Section::default();
        let words = vec!["word"; 500].join(" ");
        s.extra("email.headers[\"X-Long\"]", "X-Long", &words)
            .unwrap();
        let text = String::from_utf8(s.into_bytes()).unwrap();
        assert!(text.lines().count() > 10, "{text}");
        assert!(text.split("\r\n").all(|l| l.len() <= 78), "{text}");
        let mut s = Section::default();
        let e = s
            .extra(
                "email.extra_headers[0]",
                "List-Unsubscribe",
                &"x".repeat(2000),
            )
            .unwrap_err();
        assert_eq!(e.field, "email.extra_headers[0]");
        assert!(e.reason.contains("2018 octets"), "{e}");
        // Non-ASCII text becomes encoded words, which split anywhere.
        let mut s = Section::default();
        s.extra("f", "X-Note", &"ü".repeat(2000)).unwrap();
        let text = String::from_utf8(s.into_bytes()).unwrap();
        assert!(text.is_ascii() && text.split("\r\n").all(|l| l.len() <= 998));
    }

    #[test]
    fn fields_are_found_in_a_header_section() {
        let raw = b"Subject: x\r\nmessage-id : <a@b>\r\n\r\nFrom: not a header\r\n";
        let s = section_of(raw).unwrap();
        assert_eq!(field_value(s, "Message-ID").as_deref(), Some(" <a@b>"));
        assert!(field_value(s, "subject").is_some());
        assert!(field_value(s, "from").is_none() && field_value(s, "date").is_none());
        let folded = b"From: Jo\r\n <jo@Example.COM>\r\n\r\n";
        assert_eq!(
            from_domain(section_of(folded).unwrap()).as_deref(),
            Some("example.com")
        );
        assert_eq!(
            from_address(section_of(folded).unwrap()).as_deref(),
            Some("jo@example.com")
        );
        assert_eq!(section_of(b"\r\nbody"), Some(&b""[..]));
        assert_eq!(section_of(b"Subject: x\r\n"), None);
    }
}

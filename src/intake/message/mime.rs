//! The MIME body: text and HTML as alternatives, inline images beside the
//! HTML (multipart/related), calendar invitations as a third alternative,
//! files in multipart/mixed. Every part is 7-bit on the wire (quoted-
//! printable or base64 where needed), with CRLF line endings.

use lettre::message::header::{
    ContentDisposition, ContentId, ContentTransferEncoding, ContentType,
};
use lettre::message::{Body, MultiPart, MultiPartBuilder, SinglePart};

use super::{invalid, InvalidField};

/// One file of the message (the API's `Attachment`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttachmentInput {
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
    pub content_id: String,
    pub disposition: String,
}

const MAX_FILENAME_BYTES: usize = 255;

/// A body part: one, or several in a multipart.
pub enum Node {
    Single(SinglePart),
    Multi(MultiPart),
}

impl Node {
    /// The part's own headers, a blank line and its encoded content.
    pub fn formatted(&self) -> Vec<u8> {
        match self {
            Node::Single(p) => p.formatted(),
            Node::Multi(m) => m.formatted(),
        }
    }
}

/// Where a validated attachment goes.
enum Place {
    /// An alternative beside text and HTML (a calendar invitation).
    Alternative,
    /// Beside the HTML, shown by it through `cid:`.
    Related,
    /// A file of multipart/mixed.
    Mixed,
}

/// Builds the body from validated text; checks each attachment, naming
/// `email.attachments[i].<field>`.
pub fn body(text: &str, html: &str, attachments: &[AttachmentInput]) -> Result<Node, InvalidField> {
    let (mut alternatives, mut related, mut mixed) = (Vec::new(), Vec::new(), Vec::new());
    let mut content_ids: Vec<&str> = Vec::new();
    for (i, a) in attachments.iter().enumerate() {
        let (place, part) = attachment(i, a, !html.is_empty())?;
        let cid = a.content_id.trim_matches(['<', '>']);
        if !cid.is_empty() {
            if content_ids.contains(&cid) {
                return Err(invalid(
                    format!("email.attachments[{i}].content_id"),
                    format!("`{cid}` is already the content_id of an earlier attachment"),
                ));
            }
            content_ids.push(cid);
        }
        match place {
            Place::Alternative => alternatives.push(Node::Single(part)),
            Place::Related => related.push(Node::Single(part)),
            Place::Mixed => mixed.push(Node::Single(part)),
        }
    }
    let mut main = Vec::with_capacity(2 + alternatives.len());
    if !text.is_empty() {
        main.push(Node::Single(SinglePart::plain(self::text(text))));
    }
    if !html.is_empty() {
        let html = Node::Single(SinglePart::html(self::text(html)));
        main.push(if related.is_empty() {
            html
        } else {
            related.insert(0, html);
            Node::Multi(multi(MultiPart::related(), related))
        });
    }
    main.append(&mut alternatives);
    let main = if main.len() == 1 {
        main.pop().expect("one part")
    } else {
        Node::Multi(multi(MultiPart::alternative(), main))
    };
    Ok(if mixed.is_empty() {
        main
    } else {
        mixed.insert(0, main);
        Node::Multi(multi(MultiPart::mixed(), mixed))
    })
}

fn multi(builder: MultiPartBuilder, nodes: Vec<Node>) -> MultiPart {
    let mut nodes = nodes.into_iter();
    let mut m = match nodes.next().expect("a multipart has parts") {
        Node::Single(p) => builder.singlepart(p),
        Node::Multi(p) => builder.multipart(p),
    };
    for n in nodes {
        m = match n {
            Node::Single(p) => m.singlepart(p),
            Node::Multi(p) => m.multipart(p),
        };
    }
    m
}

/// Text with every line ending CRLF, made here in one pass (lettre would
/// insert a CR before each bare LF, moving the rest of the text each time).
fn lines(s: &str) -> String {
    String::from_utf8(super::crlf(s.as_bytes())).expect("CR and LF are ASCII: still UTF-8")
}

/// A text body: as it is (7bit) when it is ASCII in short lines, which is
/// what lettre would choose, without its second scan and copy; else
/// lettre's choice of quoted-printable or base64.
fn text(s: &str) -> Body {
    let crlf = super::crlf(s.as_bytes());
    if crlf.is_ascii() && super::header::longest_line(&crlf) < 74 {
        return Body::dangerous_pre_encoded(crlf, ContentTransferEncoding::SevenBit);
    }
    Body::new(String::from_utf8(crlf).expect("CR and LF are ASCII: still UTF-8"))
}

fn attachment(
    i: usize,
    a: &AttachmentInput,
    has_html: bool,
) -> Result<(Place, SinglePart), InvalidField> {
    let field = |name: &str| format!("email.attachments[{i}].{name}");
    let cid = a.content_id.trim_start_matches('<').trim_end_matches('>');
    if !cid.is_empty() {
        if cid.len() > 250
            || !cid
                .bytes()
                .all(|b| (33..=126).contains(&b) && b != b'<' && b != b'>')
        {
            return Err(invalid(
                field("content_id"),
                "printable ASCII without spaces or <>, at most 250 bytes (the HTML shows it as cid:<content_id>)",
            ));
        }
        if !has_html {
            return Err(invalid(
                field("content_id"),
                "an inline part is shown by the HTML body through cid:, and html_body is empty",
            ));
        }
    }
    let inline = match a.disposition.as_str() {
        "" => !cid.is_empty(),
        "inline" => true,
        "attachment" => false,
        other => {
            return Err(invalid(
                field("disposition"),
                format!("`{other}`: `attachment`, `inline`, or empty"),
            ))
        }
    };
    let filename = a.filename.as_str();
    if filename.is_empty() && (!inline || cid.is_empty()) {
        return Err(invalid(
            field("filename"),
            "required (only an inline part with a content_id may go without)",
        ));
    }
    if filename.len() > MAX_FILENAME_BYTES
        || filename
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
        || filename == "."
        || filename == ".."
    {
        return Err(invalid(
            field("filename"),
            format!("a file name without path separators or control characters, at most {MAX_FILENAME_BYTES} bytes"),
        ));
    }
    let given = a.content_type.trim();
    let type_text = if given.is_empty() {
        guess_content_type(filename).to_string()
    } else {
        given.to_string()
    };
    let essence = type_text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let content_type = ContentType::parse(&type_text).map_err(|e| {
        invalid(
            field("content_type"),
            format!("`{type_text}` is not a MIME type such as application/pdf: {e}"),
        )
    })?;
    if essence.starts_with("multipart/") || essence.starts_with("message/") {
        return Err(invalid(
            field("content_type"),
            format!("`{essence}`: mailspool builds the message's structure itself; attach such a file as application/octet-stream"),
        ));
    }
    let calendar = essence == "text/calendar"
        && type_text.to_ascii_lowercase().contains("method=")
        && a.disposition != "attachment";
    let builder = SinglePart::builder().header(content_type);
    if calendar {
        // Outlook, Gmail and Apple Mail show Accept/Decline for a
        // text/calendar alternative; it must be text, so CRLF lines.
        let body = match std::str::from_utf8(&a.content) {
            Ok(s) => Body::new(lines(s)),
            Err(_) => {
                return Err(invalid(
                    field("content"),
                    "a text/calendar invitation must be UTF-8 text",
                ))
            }
        };
        return Ok((Place::Alternative, builder.body(body)));
    }
    // Text travels in canonical form, CRLF lines (RFC 2046 section 4.1.1);
    // anything else as base64, whatever its bytes look like.
    let body = match std::str::from_utf8(&a.content) {
        Ok(text) if essence.starts_with("text/") => Body::new(lines(text)),
        _ => Body::new_with_encoding(a.content.clone(), ContentTransferEncoding::Base64)
            .expect("base64 encodes anything"),
    };
    if inline {
        let disposition = if filename.is_empty() {
            ContentDisposition::inline()
        } else {
            ContentDisposition::inline_with_name(filename)
        };
        let builder = builder.header(disposition);
        return Ok(if cid.is_empty() {
            (Place::Mixed, builder.body(body))
        } else {
            let part = builder
                .header(ContentId::from(format!("<{cid}>")))
                .body(body);
            (Place::Related, part)
        });
    }
    let part = builder
        .header(ContentDisposition::attachment(filename))
        .body(body);
    Ok((Place::Mixed, part))
}

/// A MIME type from a file name's extension; application/octet-stream
/// when it is not one of the usual ones.
pub fn guess_content_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "txt" | "log" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "htm" | "html" => "text/html; charset=utf-8",
        "ics" => "text/calendar; charset=utf-8",
        "json" => "application/json",
        "xml" => "application/xml",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "odt" => "application/vnd.oasis.opendocument.text",
        "ods" => "application/vnd.oasis.opendocument.spreadsheet",
        _ => "application/octet-stream",
    }
}

//! One SMTP mail transaction, with the MAIL FROM parameters the message
//! needs: SMTPUTF8 when an address or a header field is not ASCII (RFC
//! 6531; domains are A-labels already, so only a non-ASCII local part
//! needs it), 8BITMIME for 8-bit content (RFC 6152). A relay that lacks
//! what the message needs cannot take it, now or later: that is a
//! permanent failure with the reason, not a retry until the message dies.

use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{Extension, MailBodyParameter, MailParameter, ServerInfo};
use lettre::transport::smtp::response::Response;
use lettre::Address;

use crate::intake::message::section_of;
use crate::model::Record;

/// The MAIL FROM parameters `record` needs, or why this relay cannot take
/// it.
pub fn parameters(
    server: &ServerInfo,
    record: &Record,
    raw: &[u8],
) -> Result<Vec<MailParameter>, String> {
    let mut params = Vec::new();
    let header_end = section_of(raw).map_or(raw.len(), <[u8]>::len);
    let utf8 = std::iter::once(&record.envelope_from)
        .chain(&record.envelope_to)
        .find(|a| !a.is_ascii())
        .map(|a| format!("the address <{a}>"))
        .or_else(|| (!raw[..header_end].is_ascii()).then(|| "a header field".to_string()));
    if let Some(what) = utf8 {
        if !server.supports_feature(Extension::SmtpUtfEight) {
            return Err(format!(
                "{what} has a non-ASCII local part, which needs SMTPUTF8 (RFC 6531), and the \
                 relay does not offer it: send through a relay that offers SMTPUTF8, or to an \
                 ASCII address"
            ));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !raw.is_ascii() {
        if !server.supports_feature(Extension::EightBitMime) {
            return Err(
                "the message has 8-bit content and the relay does not offer 8BITMIME (RFC 6152): \
                 encode it quoted-printable or base64"
                    .into(),
            );
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    Ok(params)
}

/// MAIL FROM, each RCPT TO, DATA and the message. A negative reply ends
/// it with that reply; the caller closes the connection then.
pub async fn send(
    c: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    params: Vec<MailParameter>,
    raw: &[u8],
) -> Result<Response, lettre::transport::smtp::Error> {
    c.command(Mail::new(envelope.from().cloned(), params))
        .await?;
    for to in envelope.to() {
        c.command(Rcpt::new(to.clone(), vec![])).await?;
    }
    c.command(Data).await?;
    c.message(raw).await
}

/// The SMTP envelope of a record: MAIL FROM (or none) and every RCPT TO.
pub fn envelope(record: &Record) -> Result<Envelope, String> {
    let from = if record.envelope_from.is_empty() {
        None
    } else {
        Some(
            record
                .envelope_from
                .parse::<Address>()
                .map_err(|e| e.to_string())?,
        )
    };
    let to = record
        .envelope_to
        .iter()
        .map(|a| a.parse::<Address>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Envelope::new(from, to).map_err(|e| e.to_string())
}

//! One SMTP mail transaction, with the MAIL FROM parameters the message
//! needs: SMTPUTF8 when an address or a header field is not ASCII (RFC
//! 6531; domains are A-labels already, so only a non-ASCII local part
//! needs it), 8BITMIME for 8-bit content (RFC 6152). A relay that lacks
//! what the message needs cannot take it, now or later: that is a
//! permanent failure with the reason, not a retry until the message dies.

use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{Extension, MailBodyParameter, MailParameter, ServerInfo};
use lettre::Address;

use crate::delivery::connect::error_text;
use crate::delivery::retry::{classify, classify_rcpt, SendResult};
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

/// How the transactions of one message ended early, if they did.
#[derive(Debug)]
pub enum Stop {
    /// The connection broke or stalled, or a reply made no sense: the
    /// recipients not finished get this error (transient).
    Broke(lettre::transport::smtp::Error),
    /// A reply that speaks for every recipient not finished: to MAIL FROM,
    /// or about the relay rather than a recipient (throttling, refusing
    /// us, its own trouble) to RCPT TO or DATA. The relay is judged by it.
    Reply(SendResult),
}

/// MAIL FROM, each RCPT TO, DATA and the message, as many transactions as
/// the relay needs: each recipient's reply counts for it alone; DATA goes
/// when at least one was accepted, and its reply counts for those. A
/// relay that limits recipients per transaction (452 after some were
/// accepted, such as `452 4.5.3 too many recipients`) gets the rest in the next
/// transaction on the same connection. `each[k]` is set as recipient
/// `to[k]` is finished with; None where it was not reached.
pub async fn send(
    c: &mut AsyncSmtpConnection,
    from: Option<&Address>,
    to: &[Address],
    params: &[MailParameter],
    raw: &[u8],
    each: &mut [Option<SendResult>],
) -> Result<(), Stop> {
    let mut next = 0;
    while next < to.len() {
        if let Err(e) = c.command(Mail::new(from.cloned(), params.to_vec())).await {
            return Err(match reply_of(&e) {
                None => Stop::Broke(e),
                Some((code, text)) => Stop::Reply(classify(code, &text)),
            });
        }
        let mut accepted = Vec::new();
        let mut split_at = None;
        for (k, addr) in to.iter().enumerate().skip(next) {
            match c.command(Rcpt::new(addr.clone(), vec![])).await {
                Ok(_) => accepted.push(k),
                Err(e) => {
                    let Some((code, text)) = reply_of(&e) else {
                        return Err(Stop::Broke(e));
                    };
                    // The relay's limit of recipients per transaction.
                    if code == 452 && !accepted.is_empty() {
                        split_at = Some(k);
                        break;
                    }
                    match classify_rcpt(code, &text) {
                        r @ (SendResult::Throttled(_) | SendResult::Refused(_)) => {
                            let _ = c.command(Rset).await;
                            return Err(Stop::Reply(r));
                        }
                        r => each[k] = Some(r),
                    }
                }
            }
        }
        let resume = split_at.unwrap_or(to.len());
        if accepted.is_empty() {
            if let Err(e) = c.command(Rset).await {
                return Err(Stop::Broke(e));
            }
            next = resume;
            continue;
        }
        let data = match c.command(Data).await {
            Ok(_) => c.message(raw).await,
            Err(e) => Err(e),
        };
        let result = match data {
            Ok(reply) => SendResult::Accepted(reply_line(&reply)),
            Err(e) => match reply_of(&e) {
                None => return Err(Stop::Broke(e)),
                Some((code, text)) => match classify(code, &text) {
                    r @ (SendResult::Throttled(_)
                    | SendResult::Refused(_)
                    | SendResult::Deferred(_)) => return Err(Stop::Reply(r)),
                    r => {
                        // A refused DATA leaves the transaction open at
                        // some servers (Postfix): end it before the next.
                        if let Err(e) = c.command(Rset).await {
                            return Err(Stop::Broke(e));
                        }
                        r
                    }
                },
            },
        };
        for k in accepted {
            each[k] = Some(result.clone());
        }
        next = resume;
    }
    Ok(())
}

/// A positive reply as one line, as relays print it ("250 2.0.0 Ok:
/// queued as 4Xb2"); its lines joined by spaces.
fn reply_line(reply: &lettre::transport::smtp::response::Response) -> String {
    let mut line = reply.code().to_string();
    for text in reply.message() {
        line.push(' ');
        line.push_str(text);
    }
    line
}

/// The code and text of a negative reply (None: no reply: I/O, TLS, a
/// reply that made no sense).
pub fn reply_of(e: &lettre::transport::smtp::Error) -> Option<(u16, String)> {
    let code = e.status()?;
    let text = error_text(e);
    let reply = text
        .strip_prefix(&format!("{code} "))
        .unwrap_or(&text)
        .to_string();
    Some((code.into(), reply))
}

/// The SMTP envelope of a record: MAIL FROM (or none) and a RCPT TO for
/// each recipient still pending, in `Record::pending` order.
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
        .pending()
        .into_iter()
        .map(|i| {
            record.envelope_to[i]
                .parse::<Address>()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Envelope::new(from, to).map_err(|e| e.to_string())
}

//! What a reply says about a recipient: its bounce class, from the reply
//! code, the RFC 3463 enhanced status code and, where relays say more in
//! words than in codes, the text. Pure, tested as a table of real replies
//! (Gmail, Microsoft, Yahoo, Amazon SES, Postfix, Exim, as documented).
//!
//! The class is what happened; whether it is final is the code's (a 4xx
//! is never a bounce). Relay-auth and throttling replies are about us and
//! the relay, never the recipient's fault (promise 7).

pub use crate::model::BounceClass;

/// The enhanced status code (`5.1.1`) at the start of a reply's text.
pub fn enhanced_status(text: &str) -> Option<(u8, u16, u16)> {
    let word = text.split_whitespace().next()?;
    let mut parts = word.trim_end_matches([':', ';', ',']).split('.');
    let class = parts.next()?.parse::<u8>().ok()?;
    let subject = parts.next()?.parse::<u16>().ok()?;
    let detail = parts.next()?.parse::<u16>().ok()?;
    (parts.next().is_none() && matches!(class, 2 | 4 | 5)).then_some((class, subject, detail))
}

fn has(text: &str, phrases: &[&str]) -> bool {
    phrases.iter().any(|p| text.contains(p))
}

/// The class of a non-2xx reply `code text` (text without the code).
pub fn classify_reply(code: u16, text: &str) -> BounceClass {
    use BounceClass::*;
    let t = text.to_ascii_lowercase();
    let status = enhanced_status(text);
    // About us: our credentials, our right to relay or to send.
    if matches!(code, 530 | 534 | 535 | 538)
        || status.is_some_and(|s| s == (5, 7, 8) || s == (4, 7, 8))
        || crate::delivery::retry::refuses_us(text)
        || has(
            &t,
            &["address is not verified", "authentication credentials"],
        )
    {
        return RelayAuth;
    }
    // Greylisting defers one recipient once; it is not the relay slowing
    // everyone down (its reply carries 4.7.1).
    if code < 500 && has(&t, &["greylist", "graylist"]) {
        return Temporary;
    }
    if code == 421
        || code == 454
        || (code < 500 && status.is_some_and(|s| s.1 == 7))
        || crate::delivery::retry::is_rate_limit(text)
    {
        return Throttled;
    }
    // Words first where relays are known to say more than their code.
    if has(
        &t,
        &[
            "mailbox full",
            "over quota",
            "quota exceeded",
            "quotaexceeded",
            "insufficient storage",
            "mailbox is full",
        ],
    ) {
        return MailboxFull;
    }
    if has(
        &t,
        &[
            "size exceeds",
            "too large",
            "too big",
            "exceeded google's message size",
            "message length is more than",
        ],
    ) {
        return MessageTooLarge;
    }
    if has(
        &t,
        &[
            "null mx",
            "domain not found",
            "host not found",
            "unrouteable address",
            "no mx",
            "domain does not exist",
            "name service error",
        ],
    ) {
        return BadDomain;
    }
    let bad_mailbox_words = [
        "user unknown",
        "unknown user",
        "no such user",
        "does not exist",
        "mailbox unavailable",
        "mailbox not found",
        "recipient not found",
        "recipientnotfound",
        "invalid recipient",
        "user doesn't have",
        "account that you tried to reach is disabled",
        "recipient address rejected: access denied",
    ];
    if has(&t, &bad_mailbox_words) {
        return BadMailbox;
    }
    match status {
        Some((_, 1, 1 | 3 | 6 | 10)) | Some((_, 2, 1)) => return BadMailbox,
        Some((_, 1, 2)) | Some((_, 4, 4)) => return BadDomain,
        Some((_, 2, 2)) => return MailboxFull,
        Some((_, 2, 3)) | Some((_, 3, 4)) => return MessageTooLarge,
        Some((5, 7, _)) => return Policy,
        _ => {}
    }
    if code >= 500
        && has(
            &t,
            &[
                "spam",
                "blocked",
                "blacklist",
                "blocklist",
                "dmarc",
                "reputation",
                "policy",
                "prohibit",
            ],
        )
    {
        return Policy;
    }
    match code {
        552 => MessageTooLarge,
        500..=599 => Other,
        _ => Temporary,
    }
}

/// The class of a recorded error (`last_error`, a dead letter's reason):
/// from the first SMTP reply it quotes (`550 5.1.1 …`, also inside "not
/// attempted: relay … (450 4.7.1 …)"), else a connection or TLS failure
/// (temporary). None when there is no error.
pub fn classify_error(text: &str) -> Option<BounceClass> {
    if text.is_empty() {
        return None;
    }
    let bytes = text.as_bytes();
    let reply = (0..bytes.len().saturating_sub(3)).find(|&i| {
        (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && matches!(bytes[i], b'4' | b'5')
            && bytes[i + 1].is_ascii_digit()
            && bytes[i + 2].is_ascii_digit()
            && bytes[i + 3] == b' '
    });
    Some(match reply {
        Some(i) => {
            let code = text[i..i + 3].parse().unwrap_or(400);
            classify_reply(code, text[i + 4..].trim_end_matches(')'))
        }
        None => BounceClass::Temporary,
    })
}

#[cfg(test)]
mod tests {
    use super::BounceClass::*;
    use super::*;

    /// Real replies as the providers document them → their class.
    #[test]
    fn real_replies_as_a_table() {
        let cases: &[(u16, &str, BounceClass)] = &[
            // Gmail
            (550, "5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser", BadMailbox),
            (550, "5.2.1 The email account that you tried to reach is disabled.", BadMailbox),
            (552, "5.2.2 The email account that you tried to reach is over quota.", MailboxFull),
            (452, "4.2.2 The email account that you tried to reach is over quota.", MailboxFull),
            (552, "5.3.4 Your message exceeded Google's message size limits.", MessageTooLarge),
            (550, "5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users, and has been blocked.", Policy),
            (421, "4.7.0 [192.0.2.7] Our system has detected an unusual rate of unsolicited mail originating from your IP address.", Throttled),
            (550, "5.7.1 [192.0.2.7] Our system has detected that this message is likely unsolicited mail.", Policy),
            // Microsoft 365 / Outlook.com
            (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", BadMailbox),
            (550, "5.4.1 Recipient address rejected: Access denied. AS(201806281)", BadMailbox),
            (550, "5.5.0 Requested action not taken: mailbox unavailable (S2017062302)", BadMailbox),
            (554, "5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException", MailboxFull),
            (451, "4.7.500 Server busy. Please try again later from [192.0.2.7]. (AS761)", Throttled),
            (550, "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.", Policy),
            (535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.", RelayAuth),
            // Yahoo
            (554, "delivery error: dd This user doesn't have a yahoo.com account (u@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com", BadMailbox),
            (552, "1 Requested mail action aborted, mailbox not found", BadMailbox),
            (421, "4.7.0 [TSS04] Messages from 192.0.2.7 temporarily deferred due to unexpected volume or user complaints", Throttled),
            (554, "5.7.9 Message not accepted for policy reasons.", Policy),
            // Amazon SES
            (454, "Throttling failure: Maximum sending rate exceeded.", Throttled),
            (535, "Authentication Credentials Invalid", RelayAuth),
            (554, "Message rejected: Email address is not verified. The following identities failed the check in region US-EAST-1: a@example.com", RelayAuth),
            (554, "Transaction failed: Message length is more than 10485760 bytes", MessageTooLarge),
            // Postfix
            (550, "5.1.1 <u@example.org>: Recipient address rejected: User unknown in local recipient table", BadMailbox),
            (450, "4.1.2 <u@nx.example>: Recipient address rejected: Domain not found", BadDomain),
            (554, "5.7.1 <u@example.org>: Relay access denied", RelayAuth),
            (504, "5.5.2 <vm>: Helo command rejected: need fully-qualified hostname", RelayAuth),
            (552, "5.3.4 Message size exceeds fixed limit", MessageTooLarge),
            (450, "4.7.1 <u@example.org>: Recipient address rejected: too much mail", Throttled),
            (451, "4.7.1 <u@example.org>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.org.html", Temporary),
            (554, "5.7.1 Service unavailable; Client host [192.0.2.7] blocked using zen.spamhaus.org", Policy),
            (452, "4.5.3 Error: too many recipients", Temporary),
            (451, "4.3.0 Error: queue file write error", Temporary),
            (550, "5.1.10 <u@null.example>: Recipient address rejected: Domain has null MX", BadDomain),
            // Exim
            (550, "Unrouteable address", BadDomain),
            (550, "No Such User Here", BadMailbox),
            (552, "Message size exceeds maximum permitted", MessageTooLarge),
            (550, "Administrative prohibition", Policy),
            (451, "Temporary local problem - please try later", Temporary),
            (554, "5.0.0 something else entirely", Other),
        ];
        for &(code, text, want) in cases {
            assert_eq!(classify_reply(code, text), want, "{code} {text}");
        }
    }

    #[test]
    fn recorded_errors_are_classified_by_the_reply_they_quote() {
        let cases = [
            ("550 5.1.1 <u@example.org>: User unknown", Some(BadMailbox)),
            (
                "not attempted: relay ses is throttling (450 4.7.1 too much mail)",
                Some(Throttled),
            ),
            (
                "not attempted: relay a auth failed: authentication with h: 535 5.7.8 bad",
                Some(RelayAuth),
            ),
            (
                "connecting to 127.0.0.1:25: Connection refused (os error 111)",
                Some(Temporary),
            ),
            ("timed out after 60s sending", Some(Temporary)),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(classify_error(text), want, "{text}");
        }
    }

    #[test]
    fn enhanced_codes_are_read_only_where_they_stand() {
        assert_eq!(enhanced_status("5.1.1 <a@b>: no"), Some((5, 1, 1)));
        assert_eq!(enhanced_status("4.7.500 busy"), Some((4, 7, 500)));
        assert_eq!(enhanced_status("Mailbox 5.1.1"), None);
        assert_eq!(enhanced_status("1 Requested"), None);
        assert_eq!(enhanced_status(""), None);
    }
}

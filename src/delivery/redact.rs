//! Replies with the personal part of addresses taken out, for logs at
//! WARN: relays quote the recipient in rejections.

/// `reply` with the local part of every email address replaced by `*`:
/// "550 5.1.1 <bob@example.com> unknown" → "550 5.1.1 <*@example.com> unknown".
pub fn redact_addresses(reply: &str) -> String {
    let mut out = String::with_capacity(reply.len());
    for (i, word) in reply.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match word.rfind('@') {
            Some(at) => {
                let start = word[..at]
                    .rfind(|c: char| "<(\"'[:;,=".contains(c))
                    .map_or(0, |p| p + 1);
                out.push_str(&word[..start]);
                out.push('*');
                out.push_str(&word[at..]);
            }
            None => out.push_str(word),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_addresses;

    #[test]
    fn addresses_in_replies_lose_their_local_part() {
        assert_eq!(
            redact_addresses("550 5.1.1 <bob.smith@example.com>: Recipient address rejected"),
            "550 5.1.1 <*@example.com>: Recipient address rejected"
        );
        assert_eq!(
            redact_addresses("554 to=alice@x.org refused"),
            "554 to=*@x.org refused"
        );
        assert_eq!(
            redact_addresses("451 try again later"),
            "451 try again later"
        );
    }
}

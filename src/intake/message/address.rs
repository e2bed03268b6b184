//! Addresses as the wire needs them: domains in their A-label (punycode)
//! form, so that only a non-ASCII local part needs SMTPUTF8 (RFC 6531).

use lettre::message::Mailbox;
use lettre::Address;

use super::{invalid, no_line_breaks, InvalidField};

/// Parses `Name <user@domain>` or `user@domain`; the domain comes back as
/// A-labels (`münchen.example` → `xn--mnchen-3ya.example`). An invalid
/// international domain is refused, naming `field`.
pub fn mailbox(field: &str, value: &str) -> Result<Mailbox, InvalidField> {
    no_line_breaks(field, value)?;
    if value.trim().is_empty() {
        return Err(invalid(field, "is empty"));
    }
    let mb = value
        .parse::<Mailbox>()
        .map_err(|e| invalid(field, format!("`{value}` is not a mailbox: {e}")))?;
    let email = a_label(field, &mb.email)?;
    Ok(Mailbox::new(mb.name, email))
}

/// The address with its domain in A-label form; ASCII domains without an
/// `xn--` label and address literals stay exactly as given.
pub fn a_label(field: &str, address: &Address) -> Result<Address, InvalidField> {
    let domain = address.domain();
    let has_a_label = domain
        .split('.')
        .any(|l| l.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("xn--")));
    if domain.starts_with('[') || (domain.is_ascii() && !has_a_label) {
        return Ok(address.clone());
    }
    let ascii = idna::domain_to_ascii_strict(domain).map_err(|e| {
        invalid(
            field,
            format!("`{domain}` is not a valid international domain name (IDNA, UTS #46): {e}"),
        )
    })?;
    Address::new(address.user(), &ascii)
        .map_err(|e| invalid(field, format!("`{domain}` → `{ascii}`: {e}")))
}

/// A domain as A-labels (for `message_id_domain` and the like).
pub fn domain_a_label(field: &str, domain: &str) -> Result<String, InvalidField> {
    let probe = Address::new("x", domain)
        .map_err(|e| invalid(field, format!("`{domain}` is not a domain: {e}")))?;
    Ok(a_label(field, &probe)?.domain().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn international_domains_become_a_labels_and_bad_ones_are_refused() {
        let mb = mailbox("f", "Jörg <jörg@münchen.example>").unwrap();
        assert_eq!(mb.email.to_string(), "jörg@xn--mnchen-3ya.example");
        assert_eq!(mb.name.as_deref(), Some("Jörg"));
        let mb = mailbox("f", "a@Bücher.Example").unwrap();
        assert_eq!(mb.email.domain(), "xn--bcher-kva.example");
        // ASCII stays as given, case included.
        let mb = mailbox("f", "a@Example.COM").unwrap();
        assert_eq!(mb.email.domain(), "Example.COM");
        // An A-label given is checked: this one is not valid punycode.
        for bad in ["a@xn--ab-.example", "a@xn--zz.example"] {
            let e = mailbox("email.to[0]", bad).expect_err(bad);
            assert_eq!(e.field, "email.to[0]", "{e}");
        }
        assert_eq!(
            domain_a_label("message_id_domain", "bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert!(domain_a_label("d", "not a domain").is_err());
    }
}

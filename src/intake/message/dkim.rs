//! DKIM signatures (RFC 6376; Ed25519 per RFC 8463), relaxed/relaxed, with
//! ring (already under rustls): a `DKIM-Signature` field for a message's
//! bytes, made when it is sent, so Enqueue never pays for an RSA signature
//! and a rotated key signs everything that leaves after the rotation.
//!
//! Pure but for the clock the caller passes.

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use sha2::{Digest, Sha256};

use super::header::{from_domain, section_of};

/// One `[[dkim]]` entry of the config.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// Messages whose From domain is this one are signed (`d=`).
    pub domain: String,
    /// `s=`: the key's DNS record is `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM private key (PKCS#8, or PKCS#1 for RSA).
    pub key_file: std::path::PathBuf,
    /// `rsa-sha256` (default) or `ed25519-sha256`.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// The fields to sign; empty: DEFAULT_HEADERS where present.
    #[serde(default)]
    pub headers: Vec<String>,
}

fn default_algorithm() -> String {
    "rsa-sha256".into()
}

/// Every entry's signer, its key read and checked; Err names the entry.
pub fn signers(entries: &[DkimConfig]) -> Result<Vec<Signer>, String> {
    let mut out: Vec<Signer> = Vec::with_capacity(entries.len());
    for e in entries {
        let at = format!("[[dkim]] domain `{}`", e.domain);
        let domain =
            super::domain_a_label("dkim", &e.domain).map_err(|x| format!("{at}: {}", x.reason))?;
        if e.selector.is_empty()
            || !e.selector.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
        {
            return Err(format!(
                "{at}: selector `{}` is not a DNS label",
                e.selector
            ));
        }
        let algorithm = Algorithm::parse(&e.algorithm).ok_or_else(|| {
            format!(
                "{at}: algorithm `{}`: rsa-sha256 or ed25519-sha256",
                e.algorithm
            )
        })?;
        let pem = std::fs::read(&e.key_file)
            .map_err(|x| format!("{at}: cannot read key_file {}: {x}", e.key_file.display()))?;
        let signer = Signer::new(&domain, &e.selector, algorithm, &pem, &e.headers)
            .map_err(|x| format!("{at}: key_file {}: {x}", e.key_file.display()))?;
        if !signer.headers.iter().any(|h| h == "from") {
            return Err(format!(
                "{at}: headers must include `from` (RFC 6376 section 5.4)"
            ));
        }
        if out.iter().any(|s| s.domain == signer.domain) {
            return Err(format!("{at}: a second entry for the same domain"));
        }
        out.push(signer);
    }
    Ok(out)
}

/// Signs `raw` with the signer of its From domain, if there is one: the
/// signature field first, then the message.
pub fn sign_with<'a>(
    signers: &[Signer],
    raw: &'a [u8],
    now_secs: u64,
) -> std::borrow::Cow<'a, [u8]> {
    let domain = (!signers.is_empty())
        .then(|| section_of(raw).and_then(from_domain))
        .flatten();
    let Some(domain) = domain else {
        return std::borrow::Cow::Borrowed(raw);
    };
    match signers
        .iter()
        .find(|s| s.domain == domain)
        .and_then(|s| s.sign(raw, now_secs))
    {
        Some(field) => {
            let mut out = Vec::with_capacity(field.len() + raw.len());
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(raw);
            std::borrow::Cow::Owned(out)
        }
        None => std::borrow::Cow::Borrowed(raw),
    }
}

/// `rsa-sha256` or `ed25519-sha256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RsaSha256,
    Ed25519Sha256,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "rsa-sha256" => Some(Algorithm::RsaSha256),
            "ed25519-sha256" => Some(Algorithm::Ed25519Sha256),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// The header fields signed by default, where present: what a receiver
/// shows or relies on, and what a forwarder might change.
pub const DEFAULT_HEADERS: &[&str] = &[
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "in-reply-to",
    "references",
];

enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One domain's signing key.
pub struct Signer {
    pub domain: String,
    pub selector: String,
    algorithm: Algorithm,
    key: Key,
    headers: Vec<String>,
}

impl Signer {
    /// From a PEM key (PKCS#8, or PKCS#1 for RSA). Errors say what is wrong
    /// with the key, for the config's message.
    pub fn new(
        domain: &str,
        selector: &str,
        algorithm: Algorithm,
        pem: &[u8],
        headers: &[String],
    ) -> Result<Signer, String> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM private key: {e:?}"))?;
        let key = match (algorithm, &der) {
            (Algorithm::RsaSha256, PrivateKeyDer::Pkcs1(k)) => {
                RsaKeyPair::from_der(k.secret_pkcs1_der()).map(Key::Rsa)
            }
            (Algorithm::RsaSha256, PrivateKeyDer::Pkcs8(k)) => {
                RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).map(Key::Rsa)
            }
            (Algorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(k)) => {
                return Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.secret_pkcs8_der())
                    .map(Key::Ed25519)
                    .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))
                    .map(|key| Signer::with(domain, selector, algorithm, key, headers));
            }
            _ => return Err(format!("not a {} key", algorithm.name())),
        }
        .map_err(|e| format!("not a usable RSA key (2048 bits or more): {e}"))?;
        Ok(Signer::with(domain, selector, algorithm, key, headers))
    }

    fn with(
        domain: &str,
        selector: &str,
        algorithm: Algorithm,
        key: Key,
        headers: &[String],
    ) -> Signer {
        let headers = if headers.is_empty() {
            DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect()
        } else {
            headers.iter().map(|h| h.to_ascii_lowercase()).collect()
        };
        Signer {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
            algorithm,
            key,
            headers,
        }
    }

    /// The `DKIM-Signature:` field (folded, ending in CRLF) to put first in
    /// `raw`, signed at `now_secs`. None when `raw` has no header section.
    pub fn sign(&self, raw: &[u8], now_secs: u64) -> Option<String> {
        let section = section_of(raw)?;
        let body = &raw[(section.len() + 2).min(raw.len())..];
        let bh = b64(&Sha256::digest(relaxed_body(body)));
        let fields = fields(section);
        // RFC 6376 5.4.2: for each name, the last unused instance upward.
        let mut used = vec![false; fields.len()];
        let mut signed = Vec::new();
        let mut names = Vec::new();
        for name in &self.headers {
            if let Some(i) = (0..fields.len())
                .rev()
                .find(|&i| !used[i] && fields[i].0.eq_ignore_ascii_case(name))
            {
                used[i] = true;
                signed.push(relaxed_header(&fields[i].0, &fields[i].1));
                names.push(name.as_str());
            }
        }
        let tags = format!(
            "v=1; a={}; c=relaxed/relaxed; d={}; s={}; t={now_secs}; h={}; bh={bh}; b=",
            self.algorithm.name(),
            self.domain,
            self.selector,
            names.join(":"),
        );
        let mut data = signed.concat();
        data.push_str(&relaxed_header("DKIM-Signature", &tags));
        let data = data.trim_end_matches("\r\n");
        let signature = match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    data.as_bytes(),
                    &mut sig,
                )
                .ok()?;
                sig
            }
            // RFC 8463: Ed25519 signs the SHA-256 of the data.
            Key::Ed25519(k) => k.sign(&Sha256::digest(data.as_bytes())).as_ref().to_vec(),
        };
        Some(fold(&format!("DKIM-Signature: {tags}{}", b64(&signature))))
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The header section's fields as (name, unfolded value).
fn fields(section: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(section);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push_str("\r\n");
                last.1.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.to_string(), value.to_string()));
        }
    }
    out
}

/// Relaxed header canonicalization (RFC 6376 3.4.2): the name lowercase,
/// the value unfolded, whitespace runs one space, none at either end.
fn relaxed_header(name: &str, value: &str) -> String {
    let value = value.replace("\r\n", "");
    let value = value
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    format!("{}:{}\r\n", name.trim().to_ascii_lowercase(), value)
}

/// Relaxed body canonicalization (3.4.4): whitespace runs one space, none
/// at line ends, no empty lines at the end; CRLF after the last line.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut out = Vec::with_capacity(line.len());
        let mut space = false;
        for &b in line {
            if b == b' ' || b == b'\t' {
                space = true;
            } else {
                if space {
                    out.push(b' ');
                    space = false;
                }
                out.push(b);
            }
        }
        lines.push(out);
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut out = Vec::with_capacity(body.len());
    for l in lines {
        out.extend_from_slice(&l);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Folds a field at its tag boundaries (`; `) and the signature every 72
/// characters, so no line is long; verifiers unfold both.
fn fold(field: &str) -> String {
    let (head, sig) = field.rsplit_once("b=").expect("the field ends with b=");
    let mut out = head.replace("; ", ";\r\n\t");
    out.push_str("b=");
    for (i, chunk) in sig.as_bytes().chunks(72).enumerate() {
        if i > 0 {
            out.push_str("\r\n\t");
        }
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalization_as_rfc_6376_section_3_4_6_shows_it() {
        // The RFC's example: "A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n"
        assert_eq!(relaxed_header("A", " X"), "a:X\r\n");
        assert_eq!(relaxed_header("B ", " Y\t\r\n\tZ  "), "b:Y Z\r\n");
        assert_eq!(relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n"), b" C\r\nD E\r\n");
        assert_eq!(relaxed_body(b""), b"");
    }
}

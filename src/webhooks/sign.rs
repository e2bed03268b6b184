//! Standard Webhooks signatures (standardwebhooks.com): `v1,` + base64 of
//! HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, keyed with
//! the secret's decoded bytes. Pure.

use base64::Engine;

/// The `webhook-signature` header value of one request.
pub fn sign(key: &[u8], id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp_secs.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SigningKey;

    /// The specification's own example (its reference libraries test
    /// against it): secret, id, timestamp and body → signature.
    #[test]
    fn signs_the_specifications_example() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key.0,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // Any change of id, time or body changes it.
        assert_ne!(
            sig,
            sign(
                &key.0,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_331,
                br#"{"test": 2432232314}"#
            )
        );
        assert_ne!(
            sig,
            sign(
                &key.0,
                "msg_p5jXN8AQM9LWM0D4loKWxJel",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            )
        );
        assert_ne!(
            sig,
            sign(
                &key.0,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232315}"#
            )
        );
    }

    #[test]
    fn a_secret_that_is_not_base64_or_too_short_is_refused() {
        assert!(SigningKey::parse("whsec_not base64!").is_err());
        assert!(SigningKey::parse("whsec_c2hvcnQ=")
            .unwrap_err()
            .contains("5-byte"));
        // The prefix is optional, as in the reference libraries.
        assert_eq!(
            SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap()
        );
    }
}

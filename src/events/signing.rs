//! Standard Webhooks signatures (https://www.standardwebhooks.com): the secret is `whsec_` +
//! base64 of the key bytes, and each attempt carries `webhook-signature: v1,` +
//! base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), so a receiver verifies with any
//! Standard Webhooks library (the `standardwebhooks` PyPI package, `svix`, ...).

use base64::Engine;
use ring::hmac;

/// The signing key. Never printed: `Debug` shows nothing of it.
pub struct WebhookSecret(hmac::Key);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

/// Fewer key bytes than this are refused: a short key can be guessed from one signed event.
pub const MIN_KEY_BYTES: usize = 16;

impl WebhookSecret {
    /// `whsec_BASE64` (what Standard Webhooks libraries take), or the bare BASE64 (the libraries
    /// strip the prefix too). Errors name `name` and never echo the value.
    pub fn parse(value: &str, name: &str) -> Result<WebhookSecret, String> {
        let value = value.trim();
        let b64 = value.strip_prefix("whsec_").unwrap_or(value);
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| {
                format!("{name} must be whsec_ followed by base64 (make one with: echo \"whsec_$(head -c 32 /dev/urandom | base64)\")")
            })?;
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "{name} must hold at least {MIN_KEY_BYTES} key bytes (it holds {}); make one with: echo \"whsec_$(head -c 32 /dev/urandom | base64)\"",
                key.len()
            ));
        }
        Ok(WebhookSecret(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn sign(&self, id: &str, timestamp: u64, body: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body.as_bytes());
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries; the `standardwebhooks` PyPI
    /// package (1.0) signs it to the same value.
    #[test]
    fn matches_the_standard_webhooks_example() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "V").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // The bare base64 is the same key.
        let bare = WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "V").unwrap();
        assert_eq!(
            bare.sign("a", 1, "b"),
            secret.sign("a", 1, "b"),
            "prefix changed the key"
        );
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        for bad in ["whsec_not base64!", "whsec_c2hvcnQ=", ""] {
            let err = WebhookSecret::parse(bad, "OAUTH_RELAY_WEBHOOK_SECRET").unwrap_err();
            assert!(err.contains("OAUTH_RELAY_WEBHOOK_SECRET"), "{err}");
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
        let s = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "V").unwrap();
        assert!(!format!("{s:?}").contains("MfKQ"));
    }
}

//! `POST /hooks/git` on the admin listener: a push notification from a git host makes the
//! follower (`bow up -d --follow`) fetch at once. The call is authenticated by its signature,
//! not by the admin token (a git host cannot send one): HMAC-SHA256 of the body with the
//! secret `bow up --follow --webhook-secret NAME` names — GitHub's and Gitea's
//! `X-Hub-Signature-256: sha256=<hex>`, Gitea's `X-Gitea-Signature: <hex>` — or GitLab's
//! `X-Gitlab-Token: <secret>`. Anything else is refused and logged as an event.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The follower's settings, in the state dir (written by `bow up --follow`).
pub const FOLLOW_SETTINGS: &str = "follow.json";
/// Touched to make the follower fetch at once.
pub const FOLLOW_TRIGGER: &str = "follow.trigger";
/// How large a push notification may be.
pub const MAX_BODY: usize = 1 << 20;

pub fn follow_settings(state_dir: &Path) -> PathBuf {
    state_dir.join(FOLLOW_SETTINGS)
}

pub fn follow_trigger(state_dir: &Path) -> PathBuf {
    state_dir.join(FOLLOW_TRIGGER)
}

/// The name of the secret that signs webhooks, from the follower's settings.
pub fn webhook_secret_name(state_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(follow_settings(state_dir)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["webhook_secret"].as_str().map(str::to_string)
}

/// Whether `body` with these headers is signed with `secret`. `header` looks a header up by
/// (lower-case) name.
pub fn signed<'h>(
    secret: &[u8],
    body: &[u8],
    header: impl Fn(&str) -> Option<&'h str>,
) -> Result<(), &'static str> {
    let mac = |body: &[u8]| {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
        mac.update(body);
        mac
    };
    if let Some(given) = header("x-hub-signature-256") {
        let hex = given
            .strip_prefix("sha256=")
            .ok_or("a signature without sha256=")?;
        let bytes = from_hex(hex).ok_or("a signature that is not hex")?;
        return mac(body)
            .verify_slice(&bytes)
            .map_err(|_| "a wrong signature");
    }
    if let Some(given) = header("x-gitea-signature") {
        let bytes = from_hex(given).ok_or("a signature that is not hex")?;
        return mac(body)
            .verify_slice(&bytes)
            .map_err(|_| "a wrong signature");
    }
    if let Some(given) = header("x-gitlab-token") {
        // A plain token: compared in constant time.
        let same = given.len() == secret.len()
            && given
                .bytes()
                .zip(secret)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        return if same { Ok(()) } else { Err("a wrong token") };
    }
    Err("no signature (X-Hub-Signature-256, X-Gitea-Signature or X-Gitlab-Token)")
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Answers `POST /hooks/git`: (HTTP status, text). A good signature makes the follower fetch
/// at once; anything else is refused and recorded as a `follow` event.
pub(crate) fn answer<'h>(
    agent: &crate::agent::Agent,
    post: bool,
    body: Option<&[u8]>,
    header: impl Fn(&str) -> Option<&'h str>,
) -> (u16, String) {
    use bow_reconcile::EventKind;
    if !post {
        return (405, "405 POST a push notification here".to_string());
    }
    let Some(name) = webhook_secret_name(&agent.state_dir) else {
        return (
            404,
            "404 nothing follows a branch with a webhook here (bow up -d --follow --webhook-secret NAME)"
                .to_string(),
        );
    };
    let Some(body) = body else {
        return (
            413,
            format!("413 a push notification is at most {MAX_BODY} bytes"),
        );
    };
    let secret = match crate::secrets::reveal(agent, &name) {
        Ok(value) => value,
        Err(reason) => {
            agent.emit("", "", EventKind::Follow, &format!("webhook: {reason}"));
            return (503, "503 the webhook's secret cannot be read".to_string());
        }
    };
    let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
    match signed(secret, body, header) {
        Ok(()) => {
            let trigger = follow_trigger(&agent.state_dir);
            if let Err(error) = std::fs::write(&trigger, b"") {
                return (500, format!("500 {}: {error}", trigger.display()));
            }
            agent.emit(
                "",
                "",
                EventKind::Follow,
                "webhook: a signed push, fetching now",
            );
            (202, "202 fetching now".to_string())
        }
        Err(reason) => {
            agent.emit(
                "",
                "",
                EventKind::Follow,
                &format!("webhook refused: {reason}"),
            );
            (401, format!("401 {reason}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
        mac.update(body);
        hex(&mac.finalize().into_bytes())
    }

    #[test]
    fn github_gitea_and_gitlab_signatures_are_checked() {
        let (secret, body) = (
            b"s3cret".as_slice(),
            b"{\"ref\":\"refs/heads/main\"}".as_slice(),
        );
        let good = format!("sha256={}", sign(secret, body));
        let only = |name: &'static str, value: String| {
            move |h: &str| (h == name).then_some(value.clone()).map(|v| &*v.leak())
        };
        assert_eq!(
            signed(secret, body, only("x-hub-signature-256", good.clone())),
            Ok(())
        );
        assert_eq!(
            signed(b"other", body, only("x-hub-signature-256", good.clone())),
            Err("a wrong signature")
        );
        assert_eq!(
            signed(secret, b"{}", only("x-hub-signature-256", good)),
            Err("a wrong signature")
        );
        assert_eq!(
            signed(secret, body, only("x-gitea-signature", sign(secret, body))),
            Ok(())
        );
        assert_eq!(
            signed(secret, body, only("x-gitlab-token", "s3cret".into())),
            Ok(())
        );
        assert_eq!(
            signed(secret, body, only("x-gitlab-token", "s3cres".into())),
            Err("a wrong token")
        );
        assert!(signed(secret, body, |_| None).is_err());
        assert_eq!(
            signed(
                secret,
                body,
                only("x-hub-signature-256", "sha256=zz".into())
            ),
            Err("a signature that is not hex")
        );
    }
}

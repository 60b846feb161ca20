//! One ACME order for one host: the account (created once, kept), the authorization with
//! the chosen challenge, a fresh P-256 key and its CSR, the certificate chain.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::store::{self, AccountFile};
use crate::{Acme, Challenge, Issued, locked};

/// How long the CA may take to validate, and then to issue.
const PATIENCE: Duration = Duration::from_secs(90);

/// `what: error: its cause: …` (the HTTP client's errors say little without their causes).
fn error(what: &str, e: impl std::error::Error) -> String {
    let mut text = format!("{what}: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The account: the one kept in `<dir>/account.json` for this directory and email, or a new
/// one (then kept).
async fn account(acme: &Acme) -> Result<Account, String> {
    let settings = &acme.settings;
    let builder = || match &settings.directory_ca {
        Some(ca) => Account::builder_with_root(ca)
            .map_err(|e| error(&format!("the directory CA {}", ca.display()), e)),
        None => Account::builder().map_err(|e| error("the HTTPS client", e)),
    };
    if let Some(kept) = store::read_account(&settings.dir)
        && kept.directory == settings.directory
        && kept.email == settings.email
    {
        return builder()?
            .from_credentials(kept.credentials)
            .await
            .map_err(|e| error("the ACME account", e));
    }
    let contact = format!("mailto:{}", settings.email);
    let (account, credentials): (Account, AccountCredentials) = builder()?
        .create(
            &NewAccount {
                contact: &[&contact],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(|e| error(&format!("creating an account at {}", settings.directory), e))?;
    store::write_account(
        &settings.dir,
        &AccountFile {
            directory: settings.directory.clone(),
            email: settings.email.clone(),
            credentials,
        },
    )?;
    Ok(account)
}

/// A TLS-ALPN-01 challenge certificate for `host` (RFC 8737): self-signed, the host as its only
/// name, the key authorization's digest in a critical acmeIdentifier extension.
fn alpn_certificate(host: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key = KeyPair::generate().map_err(|e| error("a challenge key", e))?;
    let mut params =
        CertificateParams::new(vec![host.to_string()]).map_err(|e| error("challenge", e))?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let certificate = params
        .self_signed(&key)
        .map_err(|e| error("the challenge certificate", e))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension this certificate exists for.
    let signing = bow_edge::crypto_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| error("the challenge key", e))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![certificate.der().clone()],
        signing,
    )))
}

/// Orders, validates and fetches a certificate for `host`; saves it with its key.
pub(crate) async fn issue(acme: &Acme, host: &str) -> Result<Issued, String> {
    let mut tokens = Vec::new();
    let result = order(acme, host, &mut tokens).await;
    // Whatever happened, the validation is over.
    locked(&acme.alpn).remove(host);
    let mut answered = locked(&acme.tokens);
    for token in &tokens {
        answered.remove(token);
    }
    result
}

async fn order(acme: &Acme, host: &str, tokens: &mut Vec<String>) -> Result<Issued, String> {
    let account = account(acme).await?;
    let identifiers = [Identifier::Dns(host.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| error("a new order", e))?;
    let kind = match acme.settings.challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    {
        let mut authorizations = order.authorizations();
        while let Some(next) = authorizations.next().await {
            let mut authorization = next.map_err(|e| error("an authorization", e))?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(format!("the authorization of {host} is {other:?}")),
            }
            let mut challenge = authorization
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge for {host}"))?;
            let key_authorization = challenge.key_authorization();
            match acme.settings.challenge {
                Challenge::Http01 => {
                    locked(&acme.tokens).insert(
                        challenge.token.clone(),
                        key_authorization.as_str().to_string(),
                    );
                    tokens.push(challenge.token.clone());
                }
                Challenge::TlsAlpn01 => {
                    let certificate = alpn_certificate(host, key_authorization.digest().as_ref())?;
                    locked(&acme.alpn).insert(host.to_string(), certificate);
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| error("answering the challenge", e))?;
        }
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(100))
        .backoff(1.5)
        .timeout(PATIENCE);
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| error("waiting for the validation", e))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "the CA did not validate {host} ({status:?}){}",
            why_invalid(&mut order).await
        ));
    }
    let key = KeyPair::generate().map_err(|e| error("a certificate key", e))?;
    let mut params =
        CertificateParams::new(vec![host.to_string()]).map_err(|e| error("the CSR", e))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| error("the CSR", e))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| error("finalizing the order", e))?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| error("fetching the certificate", e))?;
    let key_pem = key.serialize_pem();
    let issued = store::parse(chain_pem.as_bytes(), key_pem.as_bytes())?;
    store::save_certificate(&acme.settings.dir, host, &chain_pem, &key_pem)?;
    let issuer = store::issuer(chain_pem.as_bytes());
    acme.record(host, |r| r.issuer = issuer);
    Ok(issued)
}

/// The CA's reasons an order's authorizations failed, for the error message.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        for challenge in &authorization.challenges {
            if let Some(problem) = &challenge.error {
                reasons.push(problem.to_string());
            }
        }
    }
    if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join("; "))
    }
}

//! Connecting a HubSpot account with OAuth: the install URL a user is sent
//! to, and the exchange of the code HubSpot sends back for tokens and the
//! account (portal) they belong to.

use super::HubspotClient;
use super::client::send;
use crate::providers::error::ProviderError;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::time::Duration;

/// The scopes crmsync asks for: contacts and leads both ways, and the
/// custom properties it keeps its echo marker in.
pub const SCOPES: &[&str] = &[
    "oauth",
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.objects.leads.read",
    "crm.objects.leads.write",
    "crm.schemas.contacts.write",
];

/// Whether HubSpot's install page takes a PKCE `code_challenge`. Its
/// documented parameters are `client_id`, `scope`, `redirect_uri`,
/// `optional_scope` and `state` only (CRM_API_FACTS.md §1.1), so crmsync
/// sends none; the app's client secret authenticates the exchange.
pub const PKCE: bool = false;

/// What a code was exchanged for.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// The HubSpot portal (account) id the user installed the app in.
    pub portal_id: u64,
    /// Bearer token.
    pub access_token: SecretString,
    /// Refresh token.
    pub refresh_token: SecretString,
    /// Lifetime of the access token.
    pub expires_in: Duration,
}

/// The URL of HubSpot's install page for crmsync's app: after consent,
/// HubSpot sends the user to `redirect_uri` with `code` and `state`.
pub fn authorize_url(
    authorize_base: &str,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    code_challenge: Option<&str>,
) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &SCOPES.join(" "))
        .append_pair("state", state);
    if let Some(challenge) = code_challenge {
        query
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
    }
    let separator = if authorize_base.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{authorize_base}{separator}{}", query.finish())
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    refresh_token: String,
    expires_in: u64,
    hub_id: Option<u64>,
}

impl HubspotClient {
    /// The app's client id, if configured (OAuth connect needs it).
    pub fn oauth_client_id(&self) -> Option<&str> {
        self.settings.client_id.as_deref()
    }

    /// Whether the app's client secret is configured.
    pub fn has_client_secret(&self) -> bool {
        self.settings.client_secret.is_some()
    }

    /// Where users consent (`hubspot.authorize_url`).
    pub fn oauth_authorize_base(&self) -> &str {
        &self.settings.authorize_url
    }

    /// Exchanges an authorization code (OAuth v3 token endpoint) and finds
    /// the account it is for: the token answer's `hub_id`, or — when it
    /// has none — the account details the new token reads.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        code_verifier: Option<&str>,
    ) -> Result<Authorized, ProviderError> {
        let (Some(client_id), Some(secret)) =
            (&self.settings.client_id, &self.settings.client_secret)
        else {
            return Err(ProviderError::Unauthorized(
                "OAuth connect needs CRMSYNC__HUBSPOT__CLIENT_ID and CRMSYNC__HUBSPOT__CLIENT_SECRET"
                    .into(),
            ));
        };
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("client_id", client_id)
                .append_pair("client_secret", secret.expose_secret())
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("code", code);
            if let Some(verifier) = code_verifier {
                form.append_pair("code_verifier", verifier);
            }
            form.finish()
        };
        let request = self.token_request(body);
        let tokens: TokenBody = send(request, None).await?;
        let access_token = SecretString::from(tokens.access_token);
        let portal_id = match tokens.hub_id {
            Some(id) => id,
            None => self.portal_id(&access_token).await?,
        };
        Ok(Authorized {
            portal_id,
            access_token,
            refresh_token: SecretString::from(tokens.refresh_token),
            expires_in: Duration::from_secs(tokens.expires_in),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(url: &str) -> Vec<(String, String)> {
        let (_, q) = url.split_once('?').unwrap_or_default();
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    #[test]
    fn the_install_url_names_the_app_the_callback_the_scopes_and_the_state() {
        let url = authorize_url(
            "https://app.hubspot.com/oauth/authorize",
            "client-1",
            "https://api.example.com/oauth/hubspot/callback",
            "st+ate",
            None,
        );
        assert!(url.starts_with("https://app.hubspot.com/oauth/authorize?"));
        let q = query(&url);
        let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("client_id"), Some("client-1"));
        assert_eq!(
            get("redirect_uri"),
            Some("https://api.example.com/oauth/hubspot/callback")
        );
        assert_eq!(get("state"), Some("st+ate"));
        assert_eq!(get("scope"), Some(SCOPES.join(" ").as_str()));
        assert_eq!(get("code_challenge"), None);
        let with_pkce = query(&authorize_url("https://x/a?b=1", "c", "r", "s", Some("ch")));
        assert!(with_pkce.contains(&("b".into(), "1".into())));
        assert!(with_pkce.contains(&("code_challenge".into(), "ch".into())));
        assert!(with_pkce.contains(&("code_challenge_method".into(), "S256".into())));
    }
}

//! Authentication of enforcer reports: the bearer token is a projected ServiceAccount token
//! with the audience `ordo-report`; the API server vouches for it through a TokenReview
//! (so revoked or expired tokens and tokens of deleted pods are refused), and the account
//! must be the one the operator created for the ApiProtection the report is about.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// Why a report was not authenticated or not authorized.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed Authorization bearer header")]
    MissingToken,
    #[error("token not authenticated: {0}")]
    Unauthenticated(String),
    #[error("{user} may not report for {namespace}/{name}; only {expected} may")]
    Forbidden {
        user: String,
        expected: String,
        namespace: String,
        name: String,
    },
    #[error("TokenReview failed: {0}")]
    Review(#[from] kube::Error),
}

/// The user name of a ServiceAccount, as the API server reports it.
pub fn service_account_user(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

/// Extracts the token of an `Authorization: Bearer …` header.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::MissingToken)?;
    let value = value.to_str().map_err(|_| AuthError::MissingToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::MissingToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(token)
}

/// Asks the API server who `token` belongs to, for `audience`; returns the user name.
pub async fn review(
    client: &kube::Client,
    token: &str,
    audience: &str,
) -> Result<String, AuthError> {
    let api: Api<TokenReview> = Api::all(client.clone());
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let answer = api.create(&PostParams::default(), &request).await?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(AuthError::Unauthenticated(
            status.error.unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    // An API server that ignores audiences answers without them; insist on ours.
    if !status
        .audiences
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|aud| aud == audience)
    {
        return Err(AuthError::Unauthenticated(format!(
            "token is not valid for audience {audience}"
        )));
    }
    status
        .user
        .and_then(|user| user.username)
        .ok_or_else(|| AuthError::Unauthenticated("no user name in the TokenReview".into()))
}

/// Checks that `user` is the ServiceAccount `service_account` in `namespace`.
pub fn authorize(
    user: &str,
    namespace: &str,
    name: &str,
    service_account: &str,
) -> Result<(), AuthError> {
    let expected = service_account_user(namespace, service_account);
    if user == expected {
        Ok(())
    } else {
        Err(AuthError::Forbidden {
            user: user.to_owned(),
            expected,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_is_parsed_strictly() {
        let mut headers = http::HeaderMap::new();
        assert!(matches!(
            bearer_token(&headers),
            Err(AuthError::MissingToken)
        ));
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Basic abc"),
        );
        assert!(matches!(
            bearer_token(&headers),
            Err(AuthError::MissingToken)
        ));
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer   "),
        );
        assert!(matches!(
            bearer_token(&headers),
            Err(AuthError::MissingToken)
        ));
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("bearer eyJ.x.y"),
        );
        assert_eq!(bearer_token(&headers).unwrap(), "eyJ.x.y");
    }

    #[test]
    fn only_the_owned_service_account_is_authorized() {
        assert!(
            authorize(
                "system:serviceaccount:bank:bank-api-enforcer",
                "bank",
                "bank-api",
                "bank-api-enforcer"
            )
            .is_ok()
        );
        let err = authorize(
            "system:serviceaccount:bank:other",
            "bank",
            "bank-api",
            "bank-api-enforcer",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("only system:serviceaccount:bank:bank-api-enforcer may"),
            "{err}"
        );
        assert!(
            authorize(
                "system:serviceaccount:other:bank-api-enforcer",
                "bank",
                "bank-api",
                "bank-api-enforcer"
            )
            .is_err()
        );
    }
}

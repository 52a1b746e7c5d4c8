//! Optional bearer-token authentication: with tokens configured, every call of the
//! `rfb.v1.Evaluator` service must carry `authorization: Bearer <token>` metadata with one of
//! them, else it fails with UNAUTHENTICATED. Health and reflection stay open (they reveal nothing
//! about models). A token file holds one token a line; the queue takes turns between tokens
//! (the k-th token is client `token k`, see [`ClientIdentity`]), so giving each person their own
//! token keeps one from starving the others even when they share an address.

use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Status};

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the token file {0} is empty")]
    Empty(String),
    #[error("the token in {0} contains characters that cannot be sent as gRPC metadata (use printable ASCII without spaces)")]
    BadCharacters(String),
}

/// Reads a token file: one token a line (surrounding white space and empty lines ignored; a
/// file with one token is the usual case).
pub fn read_token_file(path: &Path) -> Result<Vec<String>, AuthError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: shown.clone(), source })?;
    let tokens: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    if tokens.is_empty() {
        return Err(AuthError::Empty(shown));
    }
    if !tokens.iter().all(|token| token.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(AuthError::BadCharacters(shown));
    }
    Ok(tokens)
}

/// Who made a call, as the queue's fairness sees it: set by [`BearerAuth`] on authenticated
/// calls to `token k` for the k-th token of the file (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity(pub String);

/// The interceptor; without tokens it lets everything through.
#[derive(Clone, Default)]
pub struct BearerAuth {
    tokens: Arc<[Arc<str>]>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth").field("tokens", &self.tokens.len()).finish()
    }
}

impl BearerAuth {
    /// One token, or none (everything let through).
    pub fn new(token: Option<String>) -> Self {
        Self::with_tokens(token.into_iter().collect())
    }

    /// Any of `tokens` is accepted; none: everything let through.
    pub fn with_tokens(tokens: Vec<String>) -> Self {
        BearerAuth { tokens: tokens.into_iter().map(Arc::from).collect() }
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }
}

/// Compares without stopping at the first difference (no timing hint about the prefix).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if self.tokens.is_empty() {
            return Ok(request);
        }
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated("this evaluator requires `authorization: Bearer <token>` metadata"));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let Some(presented) = presented else {
            return Err(Status::unauthenticated("the authorization metadata must be `Bearer <token>`"));
        };
        // Every token is compared, whichever matches.
        let matching = self
            .tokens
            .iter()
            .enumerate()
            .fold(None, |found, (index, token)| if same_bytes(presented.as_bytes(), token.as_bytes()) { Some(index) } else { found });
        match matching {
            Some(index) => {
                request.extensions_mut().insert(ClientIdentity(format!("token {}", index + 1)));
                Ok(request)
            }
            None => Err(Status::unauthenticated("invalid bearer token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn with_header(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = value {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn tokens_are_checked() {
        let mut auth = BearerAuth::new(Some("s3cret".into()));
        assert!(auth.call(with_header(Some("Bearer s3cret"))).is_ok());
        for bad in [None, Some("Bearer nope"), Some("s3cret"), Some("Bearer s3cre")] {
            assert_eq!(auth.call(with_header(bad)).unwrap_err().code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        let mut open = BearerAuth::new(None);
        assert!(open.call(with_header(None)).is_ok());
    }

    #[test]
    fn several_tokens_name_their_clients() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "alpha\n\n  beta  \n").unwrap();
        let tokens = read_token_file(&file).unwrap();
        assert_eq!(tokens, ["alpha", "beta"]);
        let mut auth = BearerAuth::with_tokens(tokens);
        let accepted = auth.call(with_header(Some("Bearer beta"))).unwrap();
        assert_eq!(accepted.extensions().get::<ClientIdentity>(), Some(&ClientIdentity("token 2".into())));
        assert!(auth.call(with_header(Some("Bearer gamma"))).is_err());
        std::fs::write(&file, "  \n").unwrap();
        assert!(matches!(read_token_file(&file), Err(AuthError::Empty(_))));
    }
}

//! Optional bearer-token authentication: with a token configured, every call of the
//! `rfb.v1.Evaluator` service must carry `authorization: Bearer <token>` metadata, else it fails
//! with UNAUTHENTICATED. Health and reflection stay open (they reveal nothing about models).

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

/// Reads a token file: its content with surrounding white space removed.
pub fn read_token_file(path: &Path) -> Result<String, AuthError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: shown.clone(), source })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(AuthError::Empty(shown));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::BadCharacters(shown));
    }
    Ok(token)
}

/// The interceptor; without a token it lets everything through.
#[derive(Clone, Default)]
pub struct BearerAuth {
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth").field("enabled", &self.token.is_some()).finish()
    }
}

impl BearerAuth {
    pub fn new(token: Option<String>) -> Self {
        BearerAuth { token: token.map(Arc::from) }
    }

    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }
}

/// Compares without stopping at the first difference (no timing hint about the prefix).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else { return Ok(request) };
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated("this evaluator requires `authorization: Bearer <token>` metadata"));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        match presented {
            Some(token) if same_bytes(token.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated("the authorization metadata must be `Bearer <token>`")),
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
}

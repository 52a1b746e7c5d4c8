//! Optional bearer-token authentication: with tokens configured, every call of the
//! `rfb.v1.Evaluator` service must carry `authorization: Bearer <token>` metadata with one of
//! them, else it fails with UNAUTHENTICATED. Health and reflection stay open (they reveal nothing
//! about models). A token file holds one token a line; the queue takes turns between tokens
//! (the k-th token is client `token k`, see [`ClientIdentity`]), so giving each person their own
//! token keeps one from starving the others even when they share an address.
//!
//! Tokens are kept only as sha256 digests ([`TokenSet`]) and a presented token is compared by
//! its digest with every configured one, all 32 bytes each time, so neither how much of a token
//! matched nor its length shows in the time an answer takes; Debug output shows how many
//! tokens there are, never one.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
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
pub fn read_token_file(path: &Path) -> Result<TokenSet, AuthError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: shown.clone(), source })?;
    let tokens: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if tokens.is_empty() {
        return Err(AuthError::Empty(shown));
    }
    if !tokens.iter().all(|token| token.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(AuthError::BadCharacters(shown));
    }
    Ok(TokenSet::new(tokens))
}

type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether two digests are equal, looking at every byte whatever differs (no early exit).
fn same_digest(a: &TokenDigest, b: &TokenDigest) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// The accepted bearer tokens, as sha256 digests (the tokens themselves are not kept). Debug
/// shows only how many there are.
#[derive(Clone, Default)]
pub struct TokenSet {
    digests: Arc<[TokenDigest]>,
}

impl TokenSet {
    pub fn new<T: AsRef<str>>(tokens: impl IntoIterator<Item = T>) -> Self {
        TokenSet { digests: tokens.into_iter().map(|t| digest(t.as_ref())).collect() }
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The index of the token `presented` is, if any. Every configured token is compared in
    /// full, whichever matches, and by digest, so the time taken says nothing about a token's
    /// prefix or length.
    pub fn find(&self, presented: &str) -> Option<usize> {
        let presented = digest(presented);
        self.digests
            .iter()
            .enumerate()
            .fold(None, |found, (index, token)| if same_digest(&presented, token) { Some(index) } else { found })
    }
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet").field("tokens", &self.digests.len()).finish_non_exhaustive()
    }
}

/// Who made a call, as the queue's fairness sees it: set by [`BearerAuth`] on authenticated
/// calls to `token k` for the k-th token of the file (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity(pub String);

/// The interceptor; without tokens it lets everything through.
#[derive(Clone, Default, Debug)]
pub struct BearerAuth {
    tokens: TokenSet,
}

impl BearerAuth {
    /// One token, or none (everything let through).
    pub fn new(token: Option<String>) -> Self {
        Self::with_tokens(TokenSet::new(token))
    }

    /// Any of `tokens` is accepted; none: everything let through.
    pub fn with_tokens(tokens: TokenSet) -> Self {
        BearerAuth { tokens }
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }
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
        match self.tokens.find(presented) {
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
        assert_eq!(tokens.len(), 2);
        assert_eq!((tokens.find("alpha"), tokens.find("beta"), tokens.find("  beta  ")), (Some(0), Some(1), None));
        let mut auth = BearerAuth::with_tokens(tokens);
        let accepted = auth.call(with_header(Some("Bearer beta"))).unwrap();
        assert_eq!(accepted.extensions().get::<ClientIdentity>(), Some(&ClientIdentity("token 2".into())));
        assert!(auth.call(with_header(Some("Bearer gamma"))).is_err());
        std::fs::write(&file, "  \n").unwrap();
        assert!(matches!(read_token_file(&file), Err(AuthError::Empty(_))));
    }

    /// A presented token matches only when it is the whole token: prefixes, extensions, other
    /// lengths and case changes do not, and the comparison is of fixed-size digests (all 32
    /// bytes of each configured token, whichever matches).
    #[test]
    fn tokens_are_compared_whole_by_digest() {
        let tokens = TokenSet::new(["correct-horse", "battery-staple-and-more"]);
        assert_eq!(tokens.find("correct-horse"), Some(0));
        assert_eq!(tokens.find("battery-staple-and-more"), Some(1));
        for wrong in ["", "c", "correct-hors", "correct-horse ", "correct-horsee", "CORRECT-HORSE", "battery-staple", "correct-horse\0"] {
            assert_eq!(tokens.find(wrong), None, "{wrong:?}");
        }
        // Digests of different lengths' tokens have the same size: nothing to compare early.
        assert!(tokens.digests.iter().all(|d| d.len() == 32));
        assert!(same_digest(&digest("x"), &digest("x")) && !same_digest(&digest("x"), &digest("y")));
        assert_eq!(TokenSet::default().find(""), None);
    }

    /// Debug output of the token set and of the interceptor shows how many tokens there are,
    /// never a token nor its digest.
    #[test]
    fn debug_output_shows_no_token() {
        let secret = "s3cret-token-do-not-log";
        let tokens = TokenSet::new([secret, "another-s3cret"]);
        let hex: String = digest(secret).iter().map(|b| format!("{b:02x}")).collect();
        for shown in [format!("{tokens:?}"), format!("{tokens:#?}"), format!("{:?}", BearerAuth::with_tokens(tokens.clone()))] {
            assert!(!shown.contains("s3cret") && !shown.contains(&hex[..16]), "{shown}");
            assert!(shown.contains("tokens: 2"), "{shown}");
        }
    }
}

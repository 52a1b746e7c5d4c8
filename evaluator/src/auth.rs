//! Optional bearer-token authentication: with tokens configured, every call of the
//! `rfb.v1.Evaluator` service must carry `authorization: Bearer <token>` metadata with one of
//! them, else it fails with UNAUTHENTICATED. Health and reflection stay open (they reveal nothing
//! about models). A token file holds one token a line, either alone (`TOKEN`) or named
//! (`NAME TOKEN`, the name of letters, digits, `-` and `_`). The queue takes turns between
//! clients (a named token is client NAME, and tokens with one name are one client; the k-th
//! unnamed token is client `token k`, see [`ClientIdentity`]), so giving each person their own
//! token keeps one from starving the others even when they share an address. Uploads go under
//! `uploads/NAME`, or `uploads/token-<12 hex digits of the token's sha256>` for an unnamed
//! token (a name the operator did not choose, but one that stays the same across restarts and
//! reorderings of the file).
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
    #[error("line {line} of the token file {path}: {problem}")]
    BadLine { path: String, line: usize, problem: String },
}

/// Longest token name: it becomes a directory name (`uploads/NAME`).
pub const MAX_TOKEN_NAME_CHARS: usize = 64;

/// Whether `name` may name a token: 1 to [`MAX_TOKEN_NAME_CHARS`] letters, digits, `-` and
/// `_`, and not `local` nor `token-...` (the prefixes of a server without tokens and of
/// unnamed tokens, which a name must not take over).
pub fn check_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_TOKEN_NAME_CHARS {
        return Err(format!("a token name has 1 to {MAX_TOKEN_NAME_CHARS} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("the token name {name:?} may hold only letters, digits, '-' and '_'"));
    }
    if name == LOCAL_CLIENT || name.starts_with(UNNAMED_TOKEN_PREFIX) {
        return Err(format!("the token name {name:?} is reserved ({LOCAL_CLIENT:?} and \"{UNNAMED_TOKEN_PREFIX}...\" name other clients)"));
    }
    Ok(())
}

/// Reads a token file: one token a line, `TOKEN` or `NAME TOKEN` (surrounding white space and
/// empty lines ignored; a file with one token is the usual case).
pub fn read_token_file(path: &Path) -> Result<TokenSet, AuthError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: shown.clone(), source })?;
    let mut entries: Vec<(Option<String>, String)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let bad = |problem: String| AuthError::BadLine { path: shown.clone(), line: index + 1, problem };
        let (name, token) = match words.as_slice() {
            [] => continue,
            [token] => (None, *token),
            [name, token] => {
                check_token_name(name).map_err(bad)?;
                (Some(name.to_string()), *token)
            }
            _ => return Err(bad("expected `TOKEN` or `NAME TOKEN`".into())),
        };
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::BadCharacters(shown));
        }
        entries.push((name, token.to_string()));
    }
    if entries.is_empty() {
        return Err(AuthError::Empty(shown));
    }
    Ok(TokenSet::named(entries))
}

/// The upload prefix of a server without tokens.
pub const LOCAL_CLIENT: &str = "local";
/// How the upload prefix of an unnamed token starts.
pub const UNNAMED_TOKEN_PREFIX: &str = "token-";

type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether two digests are equal, looking at every byte whatever differs (no early exit).
fn same_digest(a: &TokenDigest, b: &TokenDigest) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// The accepted bearer tokens, as sha256 digests (the tokens themselves are not kept), each
/// with the client it identifies. Debug shows only how many there are.
#[derive(Clone, Default)]
pub struct TokenSet {
    digests: Arc<[TokenDigest]>,
    clients: Arc<[ClientIdentity]>,
}

impl TokenSet {
    /// Unnamed tokens.
    pub fn new<T: AsRef<str>>(tokens: impl IntoIterator<Item = T>) -> Self {
        Self::named(tokens.into_iter().map(|t| (None, t.as_ref().to_string())))
    }

    /// Tokens with their names, if any (names are not checked here: see [`check_token_name`]).
    pub fn named(entries: impl IntoIterator<Item = (Option<String>, String)>) -> Self {
        let mut digests = Vec::new();
        let mut clients = Vec::new();
        for (index, (name, token)) in entries.into_iter().enumerate() {
            let digest = digest(&token);
            clients.push(match name {
                Some(name) => ClientIdentity { queue: name.clone(), name: name.clone() },
                None => {
                    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
                    ClientIdentity { queue: format!("token {}", index + 1), name: format!("{UNNAMED_TOKEN_PREFIX}{hex}") }
                }
            });
            digests.push(digest);
        }
        TokenSet { digests: digests.into(), clients: clients.into() }
    }

    /// Who presents the `index`-th token.
    pub fn client(&self, index: usize) -> Option<&ClientIdentity> {
        self.clients.get(index)
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
        self.digests.iter().enumerate().fold(None, |found, (index, token)| if same_digest(&presented, token) { Some(index) } else { found })
    }
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet").field("tokens", &self.digests.len()).finish_non_exhaustive()
    }
}

/// Who made an authenticated call, set by [`BearerAuth`]. Debug shows the names (never the
/// token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// As the queue's fairness sees it: the token's name, or `token k` for the k-th token of
    /// the file (from 1) when it has none.
    pub queue: String,
    /// The upload prefix's last component: the token's name, or `token-<12 hex digits of the
    /// token's sha256>`.
    pub name: String,
}

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
        let presented = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))).map(str::trim);
        let Some(presented) = presented else {
            return Err(Status::unauthenticated("the authorization metadata must be `Bearer <token>`"));
        };
        match self.tokens.find(presented) {
            Some(index) => {
                if let Some(client) = self.tokens.client(index) {
                    request.extensions_mut().insert(client.clone());
                }
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
        let client = accepted.extensions().get::<ClientIdentity>().unwrap();
        assert_eq!(client.queue, "token 2");
        let beta: String = digest("beta")[..6].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(client.name, format!("token-{beta}"));
        assert!(auth.call(with_header(Some("Bearer gamma"))).is_err());
        std::fs::write(&file, "  \n").unwrap();
        assert!(matches!(read_token_file(&file), Err(AuthError::Empty(_))));
    }

    /// `NAME TOKEN` lines name their tokens; tokens with one name are one client; a bare
    /// `TOKEN` stays unnamed; bad names and lines are refused with their line number.
    #[test]
    fn named_tokens_name_their_clients() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "alice a-s3cret\n  bob   b-s3cret \nanonymous\nalice a-second\n").unwrap();
        let tokens = read_token_file(&file).unwrap();
        assert_eq!(tokens.len(), 4);
        let mut auth = BearerAuth::with_tokens(tokens);
        let who = |auth: &mut BearerAuth, token: &str| {
            auth.call(with_header(Some(&format!("Bearer {token}")))).unwrap().extensions().get::<ClientIdentity>().unwrap().clone()
        };
        assert_eq!(who(&mut auth, "a-s3cret"), ClientIdentity { queue: "alice".into(), name: "alice".into() });
        assert_eq!(who(&mut auth, "a-second"), who(&mut auth, "a-s3cret"), "one name, one client");
        assert_eq!(who(&mut auth, "b-s3cret").name, "bob");
        let anonymous = who(&mut auth, "anonymous");
        assert_eq!(anonymous.queue, "token 3");
        assert!(anonymous.name.starts_with("token-") && anonymous.name.len() == 6 + 12, "{}", anonymous.name);
        // The name alone is no token.
        assert!(auth.call(with_header(Some("Bearer alice"))).is_err());
        for (text, line) in [("al/ice tok\n", 1), ("ok tok\nx y z\n", 2), ("local tok\n", 1), ("token-abc tok\n", 1)] {
            std::fs::write(&file, text).unwrap();
            match read_token_file(&file) {
                Err(AuthError::BadLine { line: got, .. }) => assert_eq!(got, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(check_token_name(&"a".repeat(MAX_TOKEN_NAME_CHARS)).is_ok());
        assert!(check_token_name(&"a".repeat(MAX_TOKEN_NAME_CHARS + 1)).is_err());
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

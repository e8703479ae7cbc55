//! The events API's state: configuration, pool, checkpoint store, token, and the keyed
//! hashes that check tokens, the login cookie and the console's form tokens.

use std::net::SocketAddr;
use std::sync::Arc;

use hmac::{KeyInit, Mac};

use crate::checkpoint::Checkpoints;
use crate::config::Config;
use crate::db::{DbError, Pool};

/// Where `dionysus serve` listens by default: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9396";

/// The environment variable `dionysus serve` reads the API token from.
pub const TOKEN_ENV: &str = "DIONYSUS_API_TOKEN";

/// The largest `limit` a list route accepts.
pub const MAX_LIMIT: u32 = 1000;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// An HMAC-SHA-256 key of the hash's block size.
type Secret = [u8; 64];

/// Why the events API could not be set up or served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// A non-loopback address without a token.
    #[error(
        "refusing to serve the events API and console on {address}, which is not a loopback address, without a \
         token: set {TOKEN_ENV} (clients then send `Authorization: Bearer <token>`), or listen on 127.0.0.1"
    )]
    TokenRequired {
        /// The address asked for.
        address: SocketAddr,
    },
    /// The token is empty.
    #[error("the API token is empty: set {TOKEN_ENV} to a secret, or unset it")]
    EmptyToken,
    /// The database pool could not be built.
    #[error(transparent)]
    Pool(#[from] DbError),
    /// The listener could not be bound or asked for its address.
    #[error("binding the events API's listener")]
    Listener {
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

/// The events API's state: the configuration, a database pool, the checkpoint store and the
/// token, if any. Cheap to clone. Serve it with [`serve`](crate::http::serve) or embed
/// [`router`](crate::http::router).
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    pool: Pool,
    checkpoints: Checkpoints,
    /// HMAC of the token under `secret`, when a token is required.
    token_mac: Option<Vec<u8>>,
    /// Drawn at start: keys the session tokens of forms and the login cookie.
    secret: Secret,
    empty_token: bool,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("database_url", &crate::config::redact(&self.inner.config.database_url))
            .field("token", &self.inner.token_mac.is_some())
            .finish()
    }
}

impl Api {
    /// The API over the database and broker of `config`, without a token (loopback use
    /// only: [`serve`](crate::http::serve) refuses other addresses).
    pub fn new(config: Config) -> Result<Api, HttpError> {
        let pool = crate::db::pool(&config.database_url, 4)?;
        Ok(Api::with_pool(config, pool))
    }

    /// The API over an existing pool (of `config`'s database).
    pub fn with_pool(config: Config, pool: Pool) -> Api {
        let checkpoints = Checkpoints::new(pool.clone());
        let mut secret: Secret = [0; 64];
        rand::Rng::fill(&mut rand::rng(), &mut secret[..]);
        Api { inner: Arc::new(Inner { config, pool, checkpoints, token_mac: None, secret, empty_token: false }) }
    }

    /// Requires `token` (when `Some`) on every route but `/ping` and `/health`. An empty
    /// token is refused by [`serve`](crate::http::serve).
    #[must_use]
    pub fn with_token(self, token: Option<String>) -> Api {
        let Inner { config, pool, checkpoints, secret, .. } = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                config: shared.config.clone(),
                pool: shared.pool.clone(),
                checkpoints: shared.checkpoints.clone(),
                token_mac: shared.token_mac.clone(),
                secret: shared.secret,
                empty_token: shared.empty_token,
            },
        };
        let empty_token = token.as_deref().is_some_and(str::is_empty);
        let token_mac = token.filter(|token| !token.is_empty()).map(|token| mac(&secret, "token", token.as_bytes()));
        Api { inner: Arc::new(Inner { config, pool, checkpoints, token_mac, secret, empty_token }) }
    }

    /// Whether this API may be served on `address`: a loopback address, or any with a
    /// (non-empty) token.
    pub fn check_address(&self, address: SocketAddr) -> Result<(), HttpError> {
        if self.inner.empty_token {
            return Err(HttpError::EmptyToken);
        }
        if !address.ip().is_loopback() && !self.requires_token() {
            return Err(HttpError::TokenRequired { address });
        }
        Ok(())
    }

    /// Whether a token is required.
    pub fn requires_token(&self) -> bool {
        self.inner.token_mac.is_some()
    }

    pub(super) fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(super) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(super) fn checkpoints(&self) -> &Checkpoints {
        &self.inner.checkpoints
    }

    /// Whether `presented` is the token (constant time).
    pub(super) fn token_matches(&self, presented: &str) -> bool {
        self.inner
            .token_mac
            .as_ref()
            .is_some_and(|expected| verify(&self.inner.secret, "token", presented.as_bytes(), expected))
    }

    /// The login cookie's value for the token: an HMAC of its HMAC, so the cookie is not the
    /// token.
    pub(super) fn login_cookie(&self) -> Option<String> {
        self.inner.token_mac.as_ref().map(|token| hex(&mac(&self.inner.secret, "login", token)))
    }

    /// Whether `cookie` is the login cookie (constant time).
    pub(super) fn login_cookie_matches(&self, cookie: &str) -> bool {
        match (&self.inner.token_mac, unhex(cookie)) {
            (Some(token), Some(presented)) => verify(&self.inner.secret, "login", token, &presented),
            _ => false,
        }
    }

    /// The form token of session `session`.
    pub(super) fn form_token(&self, session: &str) -> String {
        hex(&mac(&self.inner.secret, "form", session.as_bytes()))
    }

    /// Whether `presented` is the form token of `session` (constant time).
    pub(super) fn form_token_matches(&self, session: &str, presented: &str) -> bool {
        unhex(presented).is_some_and(|presented| verify(&self.inner.secret, "form", session.as_bytes(), &presented))
    }
}

/// HMAC-SHA-256 of `purpose` and `data` under `secret`.
fn mac(secret: &Secret, purpose: &str, data: &[u8]) -> Vec<u8> {
    keyed(secret, purpose, data).finalize().into_bytes().to_vec()
}

/// Whether `expected` is the HMAC of `purpose` and `data`, compared in constant time.
fn verify(secret: &Secret, purpose: &str, data: &[u8], expected: &[u8]) -> bool {
    keyed(secret, purpose, data).verify_slice(expected).is_ok()
}

fn keyed(secret: &Secret, purpose: &str, data: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new(&hmac::digest::Key::<HmacSha256>::from(*secret));
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac.update(data);
    mac
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub(super) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

//! Bearer API tokens with roles (viewer < operator < admin), optionally scoped
//! to pipelines, optionally expiring, revocable. Only a SHA-256 hash of each
//! token's secret is stored, and hashes are compared in constant time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use super::ApiError;
use sluice_store::state::{Store, TokenRecord};

/// What a token may do, in increasing power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    /// Read pipelines, executions, logs.
    Viewer,
    /// Also start executions.
    Operator,
    /// Also register and delete pipelines, read the audit log.
    Admin,
}

impl Role {
    /// Stored name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role with this stored name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Create a token that expires after `lifetime` (never when None); returns
/// its record and the secret, shown once.
pub fn create_token(
    state: &dyn Store,
    role: Role,
    pipelines: Vec<String>,
    description: String,
    lifetime: Option<std::time::Duration>,
) -> anyhow::Result<(TokenRecord, String)> {
    // Expiry is checked by servers on other machines: the store's clock.
    let now = state.clock_ms();
    let id = format!("tok_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let secret = format!(
        "sluice_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let record = TokenRecord {
        id,
        role: role.name().to_string(),
        pipelines,
        description,
        expires_ms: lifetime.map(|d| now.saturating_add(d.as_millis() as i64)),
        revoked_ms: None,
    };
    state.add_token(&record, &hash(&secret), now)?;
    audit_local(state, &format!("token create {}", record.id), &record.id)?;
    Ok((record, secret))
}

/// Revoke a token by id: it gets 401 from then on.
pub fn revoke_token(state: &dyn Store, id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        state.revoke_token(id, sluice_core::units::now_ms())?,
        "no token `{id}`; `sluice token list` shows the ids"
    );
    audit_local(state, &format!("token revoke {id}"), id)
}

/// `sluice token list`: one line per token (never its secret).
pub fn list_tokens(state: &dyn Store) -> anyhow::Result<String> {
    let now = state.clock_ms();
    let mut out = format!(
        "{:<17} {:<9} {:<20} {:<28} {:<28} DESCRIPTION\n",
        "ID", "ROLE", "PIPELINES", "EXPIRES", "REVOKED"
    );
    for (token, _) in state.tokens()? {
        let scope = match token.pipelines.is_empty() {
            true => "(all)".to_string(),
            false => token.pipelines.join(","),
        };
        let expires = match token.expires_ms {
            None => "never".to_string(),
            Some(ms) if ms <= now => format!("{} (expired)", show_time(ms)),
            Some(ms) => show_time(ms),
        };
        let revoked = token
            .revoked_ms
            .map(show_time)
            .unwrap_or_else(|| "no".into());
        out.push_str(&format!(
            "{:<17} {:<9} {:<20} {:<28} {:<28} {}\n",
            token.id,
            token.role,
            scope,
            expires,
            revoked,
            token.description.escape_debug()
        ));
    }
    Ok(out)
}

/// Token management is global: its audit entries concern no pipeline, so
/// only unscoped admins read them.
fn audit_local(state: &dyn Store, action: &str, target: &str) -> anyhow::Result<()> {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    state.audit(&sluice_store::state::AuditRecord {
        seq: 0,
        ts_ms: sluice_core::units::now_ms(),
        actor: format!("local:{user}"),
        action: action.to_string(),
        target: target.to_string(),
        result: "ok".to_string(),
        pipeline: None,
    })
}

/// Milliseconds since the epoch as an RFC 3339 UTC time, for people.
pub fn show_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Hex SHA-256 of `text`.
pub(crate) fn hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Token id (what the audit log records).
    pub id: String,
    role: Role,
    pipelines: Vec<String>,
}

impl Caller {
    /// Resolve a bearer token: None without an Authorization header; 401 for
    /// an unknown, expired or revoked token.
    pub fn from_header(state: &dyn Store, header: Option<&str>) -> Result<Option<Self>, ApiError> {
        let Some(header) = header else {
            return Ok(None);
        };
        let secret = header.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
        })?;
        Self::from_secret(state, secret).map(Some)
    }

    /// Resolve a token's secret (from a bearer header or the console's
    /// session cookie): 401 for an unknown, expired or revoked token.
    pub fn from_secret(state: &dyn Store, secret: &str) -> Result<Self, ApiError> {
        let wanted = hash(secret.trim());
        // Compare with every stored hash, in constant time and without an
        // early exit, so timing says nothing about how close a guess was.
        let mut found = None;
        for (token, stored) in state.tokens().map_err(ApiError::internal)? {
            if bool::from(stored.as_bytes().ct_eq(wanted.as_bytes())) {
                found = Some(token);
            }
        }
        let token = found
            .ok_or_else(|| ApiError::unauthorized("unknown bearer token").reason("unknown"))?;
        if let Some(revoked) = token.revoked_ms {
            return Err(ApiError::unauthorized(format!(
                "token {} was revoked at {}",
                token.id,
                show_time(revoked)
            ))
            .reason("revoked"));
        }
        if let Some(expires) = token.expires_ms
            && expires <= state.clock_ms()
        {
            return Err(ApiError::unauthorized(format!(
                "token {} expired at {}",
                token.id,
                show_time(expires)
            ))
            .reason("expired"));
        }
        let role = Role::from_name(&token.role).ok_or_else(|| {
            ApiError::internal(format!(
                "token {} has unknown role {}",
                token.id, token.role
            ))
        })?;
        Ok(Caller {
            role,
            id: token.id,
            pipelines: token.pipelines,
        })
    }

    /// Its role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The pipelines this token is limited to; None when it sees all.
    pub fn scope(&self) -> Option<&[String]> {
        (!self.pipelines.is_empty()).then_some(self.pipelines.as_slice())
    }

    /// Fail with 403 unless this caller has `role` (for `pipeline`, if given).
    pub fn require(&self, role: Role, pipeline: Option<&str>) -> Result<(), ApiError> {
        if self.role < role {
            return Err(ApiError::forbidden(format!(
                "token {} has role {}; this needs {}",
                self.id,
                self.role.name(),
                role.name()
            )));
        }
        if let Some(pipeline) = pipeline
            && !self.may_see(pipeline)
        {
            return Err(ApiError::forbidden(format!(
                "token {} is not scoped to pipeline `{pipeline}`",
                self.id
            )));
        }
        Ok(())
    }

    /// Whether the token's scope covers `pipeline`.
    pub fn may_see(&self, pipeline: &str) -> bool {
        self.pipelines.is_empty() || self.pipelines.iter().any(|p| p == pipeline)
    }
}

/// Handlers take a `Caller`: requests without a valid token get 401.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Option<Caller>>()
            .cloned()
            .flatten()
            .ok_or_else(|| {
                ApiError::unauthorized("a bearer token is required: Authorization: Bearer <token>")
            })
    }
}

//! Bearer API tokens with roles (viewer < operator < admin), optionally scoped
//! to pipelines. Only a hash of each token's secret is stored.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::Digest as _;

use super::ApiError;
use crate::state::{StateStore, TokenRecord};

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

/// Create a token; returns its record and the secret, shown once.
pub fn create_token(
    state: &StateStore,
    role: Role,
    pipelines: Vec<String>,
    description: String,
) -> anyhow::Result<(TokenRecord, String)> {
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
    };
    state.add_token(&record, &hash(&secret), crate::sandbox::log::now_ms())?;
    Ok((record, secret))
}

fn hash(secret: &str) -> String {
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
    /// Resolve a bearer token; None when missing or unknown.
    pub fn from_header(state: &StateStore, header: Option<&str>) -> Result<Option<Self>, ApiError> {
        let Some(secret) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Ok(None);
        };
        let record = state
            .token_by_hash(&hash(secret.trim()))
            .map_err(ApiError::internal)?;
        Ok(record.and_then(|token| {
            Some(Caller {
                role: Role::from_name(&token.role)?,
                id: token.id,
                pipelines: token.pipelines,
            })
        }))
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

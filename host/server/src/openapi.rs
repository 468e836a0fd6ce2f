//! The OpenAPI document served at `/openapi.json`, generated: the `/api/v1`
//! paths come from the handlers' `#[utoipa::path]` attributes (the same list
//! that builds the router), request bodies and query parameters from their
//! types, and error answers from [`super::ErrorBody`].

use utoipa::OpenApi as _;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

/// What the document says besides the `/api/v1` routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Sluice API",
        description = "Pipelines, executions, approvals and events of a Sluice server."
    ),
    paths(super::health, super::metrics),
    components(schemas(super::ErrorBody))
)]
struct ServerDocument;

/// Error answers any `/api/v1` operation may give, besides its own.
const ERROR_ANSWERS: [(&str, &str); 6] = [
    ("400", "Bad request; `field` names what is wrong"),
    (
        "401",
        "No bearer token, or an unknown, expired or revoked one (`reason` says which)",
    ),
    ("403", "The token's role or pipeline scope is insufficient"),
    ("404", "Not found"),
    (
        "408",
        "The request body sent nothing for --body-timeout; the connection closes",
    ),
    (
        "413",
        "The body is over the route's limit (2 MiB; 25 MiB for webhooks); `limit_bytes` says which",
    ),
];

/// The whole document: `api` (the `/api/v1` routes, as the router has them)
/// under `/api/v1`, bearer authentication, and the common error answers.
pub fn document(api: OpenApi) -> OpenApi {
    let mut document = ServerDocument::openapi().nest("/api/v1", api);
    document.info.version = env!("CARGO_PKG_VERSION").to_string();
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    // The web console's session cookie authorizes the same calls; a mutation
    // must then also carry the page's X-Sluice-CSRF header.
    components.add_security_scheme(
        "console",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            super::console::SESSION_COOKIE,
            "The web console's session (set by POST /console/sign-in); mutations also need the X-Sluice-CSRF header of the console page",
        ))),
    );
    document.security = Some(vec![
        SecurityRequirement::new("bearer", Vec::<String>::new()),
        SecurityRequirement::new("console", Vec::<String>::new()),
    ]);
    for (path, item) in document.paths.paths.iter_mut() {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            add_error_answers(operation);
        }
    }
    document
}

fn add_error_answers(operation: &mut Operation) {
    for (status, description) in ERROR_ANSWERS {
        let answer = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert(RefOr::T(answer));
    }
}

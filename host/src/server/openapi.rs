//! The OpenAPI document the server serves at `/openapi.json`.

use axum::Json;
use serde_json::{Value, json};

fn error_responses() -> Value {
    json!({
        "400": { "description": "Bad request; `field` names what is wrong", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
        "401": { "description": "No bearer token, or an unknown, expired or revoked one (`reason`: unknown, expired or revoked)", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
        "403": { "description": "The token's role or pipeline scope is insufficient", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
        "404": { "description": "Not found", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
        "408": { "description": "The request body sent nothing for --body-timeout; the connection closes", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
        "413": { "description": "The body is over the route's limit (2 MiB; 25 MiB for webhooks); `limit_bytes` says which", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
    })
}

fn operation(summary: &str, role: &str, ok: &str) -> Value {
    let mut responses = error_responses();
    responses[ok] = json!({ "description": "Success", "content": { "application/json": {} } });
    json!({ "summary": summary, "description": format!("Requires role {role}."), "responses": responses })
}

fn body_schema(properties: Value) -> Value {
    json!({ "required": false, "content": { "application/json": { "schema": { "type": "object", "additionalProperties": false, "properties": properties } } } })
}

fn path_param(name: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
}

fn query_param(name: &str, kind: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": { "type": kind } })
}

fn header_param(name: &str, required: bool) -> Value {
    json!({ "name": name, "in": "header", "required": required, "schema": { "type": "string" } })
}

/// `GET /openapi.json`.
pub async fn document() -> Json<Value> {
    let mut put = operation(
        "Register a new version of a pipeline (body: the pipeline TOML)",
        "admin",
        "200",
    );
    put["requestBody"] = json!({ "required": true, "content": { "application/toml": { "schema": { "type": "string" } } } });
    put["responses"]["201"] = json!({ "description": "First version registered" });
    let mut start = operation(
        "Start an execution of the latest version",
        "operator",
        "202",
    );
    start["requestBody"] = json!({ "required": false, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/StartRequest" } } } });
    let mut list = operation("List executions, newest first", "viewer", "200");
    list["parameters"] = json!([
        query_param("pipeline", "string"),
        query_param("status", "string"),
        query_param("limit", "integer"),
        query_param("offset", "integer")
    ]);
    let mut logs = operation(
        "Logs of an execution (masked) and its status; ?after=<line id> follows it",
        "viewer",
        "200",
    );
    logs["parameters"] = json!([
        path_param("id"),
        query_param("action", "string"),
        query_param("after", "integer")
    ]);
    let mut audit = operation(
        "The audit log of mutating calls and token management; an admin token scoped to pipelines reads only those pipelines' entries",
        "admin",
        "200",
    );
    audit["parameters"] = json!([
        query_param("after", "integer"),
        query_param("limit", "integer")
    ]);
    let mut delete = operation("Delete a pipeline (its history stays)", "admin", "204");
    delete["parameters"] = json!([path_param("name")]);
    let mut get_one = operation("The latest version of a pipeline", "viewer", "200");
    get_one["parameters"] = json!([path_param("name")]);
    put["parameters"] = json!([path_param("name")]);
    start["parameters"] = json!([path_param("name")]);
    let mut version = operation("One version of a pipeline", "viewer", "200");
    version["parameters"] = json!([path_param("name"), path_param("version")]);
    let mut stop = operation(
        "Stop a running execution: finish (running actions end) or abandon",
        "operator",
        "202",
    );
    stop["parameters"] = json!([path_param("id")]);
    stop["requestBody"] = body_schema(
        json!({ "mode": { "type": "string", "enum": ["finish", "abandon"] }, "reason": { "type": "string" } }),
    );
    let mut retry = operation(
        "Retry a failed stage of the latest execution (failed or all actions)",
        "operator",
        "202",
    );
    retry["parameters"] = json!([path_param("id"), path_param("stage")]);
    retry["requestBody"] =
        body_schema(json!({ "mode": { "type": "string", "enum": ["failed", "all"] } }));
    let mut approve = operation(
        "Approve or reject a manual approval (role per the approval's approvers)",
        "operator",
        "200",
    );
    approve["parameters"] = json!([path_param("id"), path_param("action")]);
    approve["requestBody"] = body_schema(
        json!({ "decision": { "type": "string", "enum": ["approve", "reject"] }, "token": { "type": "string" }, "comment": { "type": "string" } }),
    );
    let mut transition = operation(
        "Enable or disable (with a reason) the transition into a stage",
        "operator",
        "200",
    );
    transition["parameters"] = json!([path_param("name"), path_param("stage")]);
    transition["requestBody"] =
        body_schema(json!({ "enabled": { "type": "boolean" }, "reason": { "type": "string" } }));
    let mut state = operation(
        "Per stage: transition, current execution, actions with progress and approval tokens",
        "viewer",
        "200",
    );
    state["parameters"] = json!([path_param("name")]);
    let mut events = operation(
        "Server-Sent Events of state changes; resume with Last-Event-ID or ?after=",
        "viewer",
        "200",
    );
    events["parameters"] = json!([
        query_param("pipeline", "string"),
        query_param("execution", "string"),
        query_param("after", "integer")
    ]);
    let mut webhook = operation(
        "GitHub-style push/pull_request/ping delivery (up to 25 MiB), authenticated by X-Hub-Signature-256 only: \
         the HMAC-SHA256 of the body, or of `<X-Sluice-Timestamp>.<body>` when that header (Unix seconds) is sent, \
         which must then be within --webhook-max-age of now. A repeated X-GitHub-Delivery id gets 200 with the first \
         execution's id and starts nothing; a ping gets 200; a delivery the filters reject gets 200 with `ignored`",
        "none (signature)",
        "202",
    );
    webhook["parameters"] = json!([
        path_param("name"),
        header_param("X-GitHub-Event", true),
        header_param("X-Hub-Signature-256", true),
        header_param("X-GitHub-Delivery", false),
        header_param("X-Sluice-Timestamp", false)
    ]);
    webhook["responses"]["200"] = json!({ "description": "A ping (`pong`), a repeated delivery (`duplicate`, `id`) or a delivery the filters reject (`ignored`)", "content": { "application/json": {} } });
    webhook["security"] = json!([]);
    let mut execution = operation(
        "An execution: stages, actions with resolved configuration, artifacts, variables ({id}: an id, a unique prefix or `latest`)",
        "viewer",
        "200",
    );
    execution["parameters"] = json!([path_param("id")]);
    let mut artifacts = operation(
        "Output artifacts of an execution: name, producing action, digest, files, bytes",
        "viewer",
        "200",
    );
    artifacts["parameters"] = json!([path_param("id")]);
    let mut artifact = operation(
        "One artifact's tree as a tar stream (files, executable bits, symlinks); its digest is verified first and a corrupt artifact is refused with 500",
        "viewer",
        "200",
    );
    artifact["parameters"] = json!([path_param("id"), path_param("name")]);
    artifact["responses"]["200"] = json!({
        "description": "The tree as a tar archive; X-Sluice-Digest names its blake3 digest",
        "headers": { "X-Sluice-Digest": { "schema": { "type": "string" } } },
        "content": { "application/x-tar": { "schema": { "type": "string", "format": "binary" } } }
    });
    artifact["responses"]["500"] = json!({ "description": "The stored artifact no longer matches its digest", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    Json(json!({
        "openapi": "3.0.3",
        "info": { "title": "Sluice API", "version": env!("CARGO_PKG_VERSION") },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": {
                    "error": { "type": "string" }, "field": { "type": "string" },
                    "reason": { "type": "string" }, "limit_bytes": { "type": "integer" },
                    "diagnostics": { "type": "array", "items": { "type": "object" } } } },
                "StartRequest": { "type": "object", "additionalProperties": false, "properties": {
                    "variables": { "type": "object", "additionalProperties": { "type": "string" } },
                    "revision": { "type": "string" } } }
            }
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/api/v1/pipelines": { "get": operation("List pipelines (latest versions)", "viewer", "200") },
            "/api/v1/pipelines/{name}": { "get": get_one, "put": put, "delete": delete },
            "/api/v1/pipelines/{name}/versions/{version}": { "get": version },
            "/api/v1/pipelines/{name}/executions": { "post": start },
            "/api/v1/executions": { "get": list },
            "/api/v1/executions/{id}": { "get": execution },
            "/api/v1/executions/{id}/logs": { "get": logs },
            "/api/v1/executions/{id}/artifacts": { "get": artifacts },
            "/api/v1/executions/{id}/artifacts/{name}": { "get": artifact },
            "/api/v1/audit": { "get": audit },
            "/api/v1/executions/{id}/stop": { "post": stop },
            "/api/v1/executions/{id}/stages/{stage}/retry": { "post": retry },
            "/api/v1/executions/{id}/approvals/{action}": { "post": approve },
            "/api/v1/pipelines/{name}/stages/{stage}/transition": { "put": transition },
            "/api/v1/pipelines/{name}/state": { "get": state },
            "/api/v1/events": { "get": events },
            "/api/v1/webhooks/{name}": { "post": webhook },
            "/metrics": { "get": { "summary": "Prometheus metrics", "security": [], "responses": { "200": { "description": "text/plain" } } } }
        }
    }))
}

//! `/openapi.json`: the whole HTTP surface, generated from the handlers and types themselves.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{admin, gateway, pool, session};

#[derive(OpenApi)]
#[openapi(
    info(title = "Ferry", description = "OpenAI-compatible pay-per-call LLM gateway and its admin API."),
    paths(
        gateway::chat_completions,
        gateway::completions,
        gateway::embeddings,
        gateway::list_models,
        gateway::get_model,
        gateway::messages::create_message,
        gateway::responses::create_response,
        gateway::files::upload,
        gateway::files::list,
        gateway::files::retrieve,
        gateway::files::content,
        gateway::files::delete,
        gateway::batches::create,
        gateway::batches::list,
        gateway::batches::retrieve,
        gateway::batches::cancel,
        admin::create_tenant,
        admin::list_tenants,
        admin::get_tenant,
        admin::update_tenant,
        admin::create_key,
        admin::list_keys,
        admin::revoke_key,
        admin::put_model,
        admin::list_models,
        admin::get_model,
        admin::update_model,
        admin::delete_model,
        admin::money::add_credit,
        admin::money::refund,
        admin::money::adjust,
        admin::money::ledger,
        admin::money::usage_report,
        admin::money::usage_events,
        admin::money::key_spend,
        admin::money::invoices,
        admin::money::alerts,
        admin::money::add_price,
        admin::money::list_prices,
        session::methods,
        session::sign_in,
        session::current,
        session::sign_out,
        session::oidc_start,
        session::oidc_callback,
        pool::status,
        pool::prewarm,
    ),
    modifiers(&BearerAuth),
    tags((name = "gateway", description = "OpenAI-compatible endpoints"), (name = "admin", description = "Tenants, keys and models"),
        (name = "billing", description = "Credit, prices, usage and invoices"),
        (name = "session", description = "The console's sign-in: a session cookie for a key"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (fy_…) or an OIDC JWT"))
                    .build(),
            ),
        );
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The document as pretty JSON, for `ferry openapi` and client generators.
pub fn openapi_json() -> Result<String, serde_json::Error> {
    ApiDoc::openapi().to_pretty_json()
}

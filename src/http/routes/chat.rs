//! `POST /chat`: answer a message and store the exchange.

use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::models::now;
use crate::domain::store::NewExchange;
use crate::domain::wire;
use crate::http::AppState;
use crate::http::auth::Owner;
use crate::http::docs::{
    ChatRequestBody, ChatResponseBody, ConversationErrors, DetailBody, ValidationBody,
};
use crate::http::error::ApiError;
use crate::http::extract::ChatBody;
use crate::http::json::JsonBody;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(chat))
}

/// Answers a message and stores the exchange: a rule's reply is computed by
/// the store's append, from the session's history at that moment; a
/// model's from the history read before asking it.
#[utoipa::path(
    post,
    path = "/chat",
    operation_id = "send_message",
    tag = "chat",
    summary = "Send a message",
    description = "Answers with the bot's reply once the exchange is stored (committed, on a database).",
    request_body = ChatRequestBody,
    responses(
        (status = 200, description = "The bot's reply", body = ChatResponseBody),
        (status = 413, description = "Body larger than the limit", body = DetailBody),
        (status = 408, description = "The body arrived too slowly", body = DetailBody),
        (status = 422, description = "Invalid body", body = ValidationBody),
        ConversationErrors,
        (status = 507, description = "A session or message cap was reached; nothing stored", body = DetailBody),
        (status = 502, description = "The model server (`--llm-url`) failed or answered nonsense; nothing stored", body = DetailBody),
        (status = 504, description = "The model server did not answer within `--llm-timeout`; nothing stored", body = DetailBody),
    )
)]
async fn chat(
    State(state): State<AppState>,
    owner: Owner,
    ChatBody(request): ChatBody,
) -> Result<JsonBody, ApiError> {
    let exchange = NewExchange {
        user_message: request.user_message.into(),
        user_name: request.user_name.into(),
        timestamp: now(),
    };
    let entry = state
        .replies
        .answer(
            &*state.store,
            &owner.scope_id(&request.session_id),
            exchange,
        )
        .await?;
    Ok(JsonBody(wire::chat_response(
        &entry,
        request.session_id.as_str(),
    )))
}

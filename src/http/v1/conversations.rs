//! `/v1/conversations` and their items.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::OpenAiError;
use super::input::{Body, Ids, MAX_ITEMS, Message, Role, messages};
use super::schema::{
    BodyErrors, ConversationCreate, ConversationDeleted, ConversationObject, ConversationUpdate,
    ErrorBody, ItemList, ItemObject, ItemsCreate, KeyErrors, Order, StorageError,
};
use super::{Half, Item, conversation_json, exchanges_of, list_json, new_id, parse_item_id};
use crate::domain::models::{SessionId, now};
use crate::domain::store::{At, Conversation, Edit, Edited, Numbered};
use crate::http::AppState;
use crate::http::auth::Owner;
use crate::http::extract::QueryParams;

/// The most items one page lists, and the default.
const MAX_PAGE: i64 = 100;
const DEFAULT_PAGE: i64 = 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(retrieve, update, delete))
        .routes(routes!(add_items, list_items))
        .routes(routes!(retrieve_item, delete_item))
}

/// The store key of a conversation id the caller named.
fn key(owner: &Owner, id: &str) -> SessionId {
    SessionId::from_store_key(owner.scope(id))
}

/// Messages a conversation stores: user and assistant only, at most [`MAX_ITEMS`].
fn stored_messages(
    body: &Body,
    state: &AppState,
    required: bool,
) -> Result<Vec<Message>, OpenAiError> {
    let value = match body.0.get("items") {
        None | Some(Value::Null) if required => return Err(OpenAiError::missing("items")),
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(value) => value,
    };
    let parsed = messages(value, "items", &state.limits)?;
    if parsed.len() > MAX_ITEMS {
        return Err(OpenAiError::invalid(
            "items",
            "array_above_max_length",
            format!(
                "Invalid 'items': array too long. Expected an array with maximum length \
                 {MAX_ITEMS}, but got an array with length {} instead.",
                parsed.len()
            ),
        ));
    }
    if let Some(at) = parsed.iter().position(|m| m.role == Role::System) {
        return Err(OpenAiError::invalid(
            format!("items[{at}].role"),
            "invalid_value",
            "Conversations store 'user' and 'assistant' messages only.",
        ));
    }
    Ok(parsed)
}

#[utoipa::path(post, path = "/v1/conversations", operation_id = "create_conversation", tag = "openai",
    summary = "Create a conversation",
    description = "A new conversation with a server-made id (`conv_…`), optional metadata and up to 20 first items, stored as given (no reply is made).",
    request_body(content = Option<ConversationCreate>, description = "Optional: an empty body makes an empty conversation", content_type = "application/json"),
    responses(
        (status = 200, description = "The conversation", body = ConversationObject),
        (status = 400, description = "Invalid request", body = ErrorBody),
        KeyErrors,
        StorageError,
        BodyErrors,
        (status = 507, description = "A session or message cap was reached; nothing stored", body = ErrorBody),
    ))]
async fn create(
    State(state): State<AppState>,
    owner: Owner,
    body: Body,
) -> Result<Json<Value>, OpenAiError> {
    let metadata = body.metadata()?.unwrap_or_default();
    let items = stored_messages(&body, &state, false)?;
    let created_at = now();
    let exchanges = exchanges_of(&items, created_at);
    // 128 random bits do not collide; a taken id is still never reused.
    for _ in 0..3 {
        let id = new_id("conv_");
        let created = state
            .store
            .create(
                &key(&owner, &id),
                created_at,
                metadata.clone(),
                exchanges.clone(),
            )
            .await?;
        if created {
            return Ok(Json(conversation_json(&id, created_at, &metadata)));
        }
    }
    Err(OpenAiError::from(
        crate::domain::store::StoreError::Unavailable("no free conversation id".into()),
    ))
}

#[utoipa::path(get, path = "/v1/conversations/{conversation_id}", operation_id = "retrieve_conversation", tag = "openai",
    summary = "Retrieve a conversation",
    description = "Any of the caller's conversations, including sessions begun with `POST /chat` (under their session id, with empty metadata).",
    params(("conversation_id" = String, Path, description = "The conversation (or seed session) id")),
    responses(
        (status = 200, description = "The conversation", body = ConversationObject),
        (status = 404, description = "No such conversation", body = ErrorBody),
        KeyErrors,
        StorageError,
    ))]
async fn retrieve(
    State(state): State<AppState>,
    owner: Owner,
    ids: Ids,
) -> Result<Json<Value>, OpenAiError> {
    let found = state
        .store
        .conversation(key(&owner, &ids.conversation).as_str(), false)
        .await?
        .ok_or_else(|| OpenAiError::no_conversation(&ids.conversation))?;
    Ok(Json(conversation_json(
        &ids.conversation,
        found.created_at,
        &found.metadata,
    )))
}

#[utoipa::path(post, path = "/v1/conversations/{conversation_id}", operation_id = "update_conversation", tag = "openai",
    summary = "Update a conversation's metadata",
    params(("conversation_id" = String, Path, description = "The conversation id")),
    request_body = ConversationUpdate,
    responses(
        (status = 200, description = "The conversation", body = ConversationObject),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        KeyErrors,
        StorageError,
        BodyErrors,
    ))]
async fn update(
    State(state): State<AppState>,
    owner: Owner,
    ids: Ids,
    body: Body,
) -> Result<Json<Value>, OpenAiError> {
    let metadata = body
        .metadata()?
        .ok_or_else(|| OpenAiError::missing("metadata"))?;
    let session = key(&owner, &ids.conversation);
    if !state.store.set_metadata(&session, metadata).await? {
        return Err(OpenAiError::no_conversation(&ids.conversation));
    }
    retrieve(State(state), owner, ids).await
}

#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}", operation_id = "delete_conversation_v1", tag = "openai",
    summary = "Delete a conversation",
    description = "The conversation and all its items, for good (the seed API's `DELETE /chat/history/{id}` does the same).",
    params(("conversation_id" = String, Path, description = "The conversation id")),
    responses(
        (status = 200, description = "Deleted", body = ConversationDeleted),
        (status = 404, description = "No such conversation", body = ErrorBody),
        KeyErrors,
        StorageError,
    ))]
async fn delete(
    State(state): State<AppState>,
    owner: Owner,
    ids: Ids,
) -> Result<Json<Value>, OpenAiError> {
    if !state
        .store
        .delete(key(&owner, &ids.conversation).as_str())
        .await?
    {
        return Err(OpenAiError::no_conversation(&ids.conversation));
    }
    Ok(Json(json!({
        "id": ids.conversation,
        "object": "conversation.deleted",
        "deleted": true,
    })))
}

#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/items", operation_id = "create_items", tag = "openai",
    summary = "Add items",
    description = "Stores up to 20 messages as given, without making a reply (an imported transcript). A user message opens an exchange; an assistant message answers the open one (also the conversation's last, if it has no reply yet).",
    params(("conversation_id" = String, Path, description = "The conversation id")),
    request_body = ItemsCreate,
    responses(
        (status = 200, description = "The items added", body = ItemList),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        KeyErrors,
        StorageError,
        BodyErrors,
        (status = 507, description = "A message cap was reached; nothing stored", body = ErrorBody),
    ))]
async fn add_items(
    State(state): State<AppState>,
    owner: Owner,
    ids: Ids,
    body: Body,
) -> Result<Json<Value>, OpenAiError> {
    let mut items = stored_messages(&body, &state, true)?;
    let session = key(&owner, &ids.conversation);
    let missing = || OpenAiError::no_conversation(&ids.conversation);
    let answers_first = items.first().is_some_and(|m| m.role == Role::Assistant);
    let conversation = state
        .store
        .conversation(session.as_str(), answers_first)
        .await?
        .ok_or_else(missing)?;
    let mut added = Vec::with_capacity(items.len());
    // An assistant message first answers the last exchange if it is open
    // (the exchanges were read only if the first message is the assistant's).
    let open = conversation
        .exchanges
        .last()
        .filter(|last| last.bot_reply.is_empty());
    if let Some(open) = open {
        let text: Arc<str> = Arc::from(items[0].text.as_str());
        let edit = Edit {
            user_message: None,
            bot_reply: Some(text.clone()),
        };
        match state.store.edit(&session, At::Seq(open.seq), edit).await? {
            Some(Edited::Kept(_)) => {
                added.push(Item {
                    seq: open.seq,
                    half: Half::Assistant,
                    text,
                });
                items.remove(0);
            }
            _ => return Err(missing()),
        }
    }
    let exchanges = exchanges_of(&items, now());
    let seqs = state
        .store
        .import(&session, exchanges.clone())
        .await?
        .ok_or_else(missing)?;
    for (seq, entry) in seqs.into_iter().zip(exchanges) {
        added.extend(Item::of(&Numbered { seq, entry }).collect::<Vec<_>>());
    }
    Ok(Json(list_json(&added, false)))
}

#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/items", operation_id = "list_items", tag = "openai",
    summary = "List items",
    description = "The conversation's messages, two per exchange (user, then assistant), newest first unless `order=asc`; `after` is the last id of the previous page.",
    params(
        ("conversation_id" = String, Path, description = "The conversation id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("order" = inline(Option<Order>), Query, description = "`asc` or `desc` (default)"),
        ("after" = Option<String>, Query, pattern = "^msg_[1-9][0-9]*[ua]$", description = "An item id: list the items after it in this order"),
    ),
    responses(
        (status = 200, description = "A page of items", body = ItemList),
        (status = 400, description = "Invalid query parameters", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        KeyErrors,
        StorageError,
    ))]
async fn list_items(
    State(state): State<AppState>,
    owner: Owner,
    ids: Ids,
    mut query: QueryParams,
) -> Result<Json<Value>, OpenAiError> {
    let limit = query.int("limit", 1, MAX_PAGE).unwrap_or(DEFAULT_PAGE) as usize;
    let ascending = query.choice("order", &["asc", "desc"], "desc") == "asc";
    let after = query.raw("after").map(str::to_owned);
    query.finish()?;
    let after = match after {
        None => None,
        Some(id) => Some(parse_item_id(&id).ok_or_else(|| {
            OpenAiError::invalid(
                "after",
                "invalid_value",
                format!("Invalid 'after': '{id}' is not an item id of this server."),
            )
        })?),
    };
    let conversation = state
        .store
        .conversation(key(&owner, &ids.conversation).as_str(), true)
        .await?
        .ok_or_else(|| OpenAiError::no_conversation(&ids.conversation))?;
    let mut items: Vec<Item> = conversation.exchanges.iter().flat_map(Item::of).collect();
    if !ascending {
        items.reverse();
    }
    // A cursor is a place in the order even if its item is gone since.
    let start = match after {
        None => 0,
        Some(cursor) => items
            .iter()
            .position(|item| {
                let place = (item.seq, item.half);
                if ascending {
                    place > cursor
                } else {
                    place < cursor
                }
            })
            .unwrap_or(items.len()),
    };
    let end = start.saturating_add(limit).min(items.len());
    Ok(Json(list_json(&items[start..end], end < items.len())))
}

/// The conversation and its item `item_id`, if both exist.
async fn find_item(
    state: &AppState,
    session: &SessionId,
    ids: &Ids,
) -> Result<(Conversation, Item), OpenAiError> {
    let item_id = ids.item.as_deref().unwrap_or_default();
    let gone = || OpenAiError::not_found(format!("Item with id '{item_id}' not found."));
    let conversation = state
        .store
        .conversation(session.as_str(), true)
        .await?
        .ok_or_else(|| OpenAiError::no_conversation(&ids.conversation))?;
    let (seq, half) = parse_item_id(item_id).ok_or_else(gone)?;
    let item = conversation
        .exchanges
        .iter()
        .find(|exchange| exchange.seq == seq)
        .and_then(|exchange| Item::of(exchange).find(|item| item.half == half))
        .ok_or_else(gone)?;
    Ok((conversation, item))
}

#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/items/{item_id}", operation_id = "retrieve_item", tag = "openai",
    summary = "Retrieve an item",
    params(
        ("conversation_id" = String, Path, description = "The conversation id"),
        ("item_id" = String, Path, description = "The item id (`msg_…`)"),
    ),
    responses(
        (status = 200, description = "The item", body = ItemObject),
        (status = 404, description = "No such conversation or item", body = ErrorBody),
        KeyErrors,
        StorageError,
    ))]
async fn retrieve_item(
    State(state): State<AppState>,
    owner: Owner,
    ids: Ids,
) -> Result<Json<Value>, OpenAiError> {
    let (_, item) = find_item(&state, &key(&owner, &ids.conversation), &ids).await?;
    Ok(Json(item.json()))
}

#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/items/{item_id}", operation_id = "delete_item", tag = "openai",
    summary = "Delete an item",
    description = "Removes the message for good. The seed API's history keeps the exchange with that side as an empty string; an exchange left with neither side is removed.",
    params(
        ("conversation_id" = String, Path, description = "The conversation id"),
        ("item_id" = String, Path, description = "The item id (`msg_…`)"),
    ),
    responses(
        (status = 200, description = "The conversation the item was in", body = ConversationObject),
        (status = 404, description = "No such conversation or item", body = ErrorBody),
        KeyErrors,
        StorageError,
    ))]
async fn delete_item(
    State(state): State<AppState>,
    owner: Owner,
    ids: Ids,
) -> Result<Json<Value>, OpenAiError> {
    let session = key(&owner, &ids.conversation);
    let (conversation, item) = find_item(&state, &session, &ids).await?;
    let empty = Some(Arc::from(""));
    let edit = match item.half {
        Half::User => Edit {
            user_message: empty,
            bot_reply: None,
        },
        Half::Assistant => Edit {
            user_message: None,
            bot_reply: empty,
        },
    };
    if state
        .store
        .edit(&session, At::Seq(item.seq), edit)
        .await?
        .is_none()
    {
        return Err(OpenAiError::not_found(format!(
            "Item with id '{}' not found.",
            item.id()
        )));
    }
    // Item deletions leave the metadata as it was (and a seed session whose
    // last message went is gone: there is nothing left to read back).
    Ok(Json(conversation_json(
        &ids.conversation,
        conversation.created_at,
        &conversation.metadata,
    )))
}

//! Fuzzes request parsing: content type + body bytes through FastAPI-style
//! decoding and pydantic-style validation. Nothing may panic; every refusal
//! must serialize to the contract's JSON.
#![no_main]

use axum::response::IntoResponse;
use chatbot_api::http::extract::decode_body;
use chatbot_api::http::validate::{ChatRequest, Limits};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&[u8]>; 4] = [
    None,
    Some(b"application/json"),
    Some(b"text/plain"),
    Some(b"application/vnd.x+json; charset=utf-8"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let limits = Limits { max_message_chars: 64, ..Limits::default() };
    let outcome = decode_body(content_type, body)
        .and_then(|value| ChatRequest::parse(value, &limits).map_err(chatbot_api::http::error::ApiError::Validation));
    match outcome {
        Ok(request) => {
            assert!(!request.user_message.is_empty() && request.user_message.chars().count() <= 64);
            assert!(!request.session_id.as_str().contains('/'));
        }
        Err(err) => {
            let response = err.into_response();
            assert!(response.status().is_client_error(), "{}", response.status());
        }
    }
});

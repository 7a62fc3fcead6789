//! A response body already written as JSON (by `domain::wire` or the
//! stores), answered as `application/json` without another pass.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// A body already written as JSON: answered as `application/json`.
#[derive(Debug)]
pub struct JsonBody(pub Vec<u8>);

impl IntoResponse for JsonBody {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.0,
        )
            .into_response()
    }
}

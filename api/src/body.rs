//! Reading JSON bodies: the 64 KiB limit, the content type, and field-by-field
//! extraction that reports every problem of a well-formed body at once.

use actix_web::{http::header, web, HttpRequest};
use chrono::{DateTime, SubsecRound, Utc};
use futures_util::StreamExt;
use keyledger_events::domain::ValidationDetails;
use serde_json::{Map, Value};

use crate::{error::ApiError, BODY_LIMIT};

/// The body as a JSON object; an empty body is an empty object.
pub async fn read_object(req: &HttpRequest, payload: web::Payload) -> Result<Fields, ApiError> {
    object_of(&read_json(req, payload).await?)
}

/// The body of a request that must send JSON, read whole (within
/// [`BODY_LIMIT`]); empty (or only white space) whatever its type.
pub async fn read_json(req: &HttpRequest, mut payload: web::Payload) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > BODY_LIMIT) {
        return Err(ApiError::PayloadTooLarge);
    }
    // A body that comes in one chunk (a small one, as a verification's) is
    // kept as it came; only a second chunk makes a buffer to gather them.
    let mut first = web::Bytes::new();
    let mut gathered: Option<web::BytesMut> = None;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("the body could not be read: {e}")))?;
        let read = gathered.as_ref().map_or(first.len(), |bytes| bytes.len());
        if read + chunk.len() > BODY_LIMIT {
            return Err(ApiError::PayloadTooLarge);
        }
        match gathered.as_mut() {
            Some(bytes) => bytes.extend_from_slice(&chunk),
            None if first.is_empty() => first = chunk,
            None => {
                let mut bytes = web::BytesMut::with_capacity(first.len() + chunk.len());
                bytes.extend_from_slice(&first);
                bytes.extend_from_slice(&chunk);
                gathered = Some(bytes);
            }
        }
    }
    let bytes = gathered.map_or(first, web::BytesMut::freeze);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(web::Bytes::new());
    }
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::BadRequest(
            "Send the body as JSON with 'Content-Type: application/json'.".into(),
        ));
    }
    Ok(bytes)
}

/// A body read by [`read_json`] as the object of its fields (an empty body:
/// no fields).
pub fn object_of(bytes: &[u8]) -> Result<Fields, ApiError> {
    if bytes.is_empty() {
        return Ok(Fields::new(Map::new()));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(Fields::new(map)),
        Ok(_) => Err(ApiError::invalid("body", "must be a JSON object")),
        Err(e) => Err(ApiError::BadRequest(format!("The body is not valid JSON: {e}."))),
    }
}

/// A JSON object being taken apart: each `take_*` removes a field and notes
/// any problem; [`Fields::finish`] refuses unknown fields and reports all.
pub struct Fields {
    map: Map<String, Value>,
    details: ValidationDetails,
}

impl Fields {
    pub fn new(map: Map<String, Value>) -> Fields {
        Fields {
            map,
            details: ValidationDetails::default(),
        }
    }

    /// The fields not taken yet (all of them before the first `take`).
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    fn problem<T>(&mut self, field: &str, problem: &str) -> Option<T> {
        self.details.add(field, problem);
        None
    }

    /// A required string.
    pub fn string(&mut self, field: &str) -> Option<String> {
        match self.map.remove(field) {
            Some(Value::String(s)) => Some(s),
            None | Some(Value::Null) => self.problem(field, "is required"),
            Some(_) => self.problem(field, "must be a string"),
        }
    }

    /// An optional string (absent or null: `None`).
    pub fn optional_string(&mut self, field: &str) -> Option<String> {
        match self.map.remove(field) {
            Some(Value::String(s)) => Some(s),
            None | Some(Value::Null) => None,
            Some(_) => self.problem(field, "must be a string"),
        }
    }

    /// An optional list of strings.
    pub fn string_list(&mut self, field: &str) -> Option<Vec<String>> {
        match self.map.remove(field) {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => Some(
                items
                    .into_iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            ),
            Some(_) => self.problem(field, "must be a list of strings"),
        }
    }

    /// A list of strings that may be absent (`None`), null (`Some(None)`) or set.
    pub fn nullable_string_list(&mut self, field: &str) -> Option<Option<Vec<String>>> {
        match self.map.get(field) {
            None => None,
            Some(Value::Null) => {
                self.map.remove(field);
                Some(None)
            }
            Some(_) => self.string_list(field).map(Some),
        }
    }

    /// An optional boolean.
    pub fn boolean(&mut self, field: &str) -> Option<bool> {
        match self.map.remove(field) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b),
            Some(_) => self.problem(field, "must be true or false"),
        }
    }

    pub fn integer(&mut self, field: &str) -> Option<i64> {
        match self.map.remove(field) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
            Some(_) => self.problem(field, "must be a whole number"),
        }
    }

    pub fn object(&mut self, field: &str) -> Option<Map<String, Value>> {
        match self.map.remove(field) {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(map),
            Some(_) => self.problem(field, "must be an object"),
        }
    }

    /// A timestamp that may be absent (`None`), null (`Some(None)`) or set.
    pub fn nullable_time(&mut self, field: &str) -> Option<Option<DateTime<Utc>>> {
        match self.map.remove(field) {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::String(text)) => match DateTime::parse_from_rfc3339(&text) {
                // PostgreSQL keeps microseconds.
                Ok(at) => Some(Some(at.with_timezone(&Utc).trunc_subsecs(6))),
                Err(_) => self.problem(field, "must be an RFC 3339 timestamp, e.g. 2027-01-31T00:00:00Z"),
            },
            Some(_) => self.problem(field, "must be an RFC 3339 timestamp or null"),
        }
    }

    /// Every problem found, plus one per unknown field.
    pub fn finish(mut self) -> Result<(), ApiError> {
        for name in self.map.keys() {
            self.details.add(name, "unknown field");
        }
        if self.details.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.details))
        }
    }
}

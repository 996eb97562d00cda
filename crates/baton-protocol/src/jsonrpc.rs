//! The JSON-RPC 2.0 envelope (<https://www.jsonrpc.org/specification>).
//!
//! One [`Message`] is one JSON object on the wire. Baton always writes `"jsonrpc":"2.0"` and
//! accepts messages where it is absent (the Codex exec server omits it) or present.
//! A message is classified by its keys: `method` + `id` is a request, `method` without `id` a
//! notification, `result` a success response, `error` an error response.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Invalid JSON was received (`-32700`).
pub const PARSE_ERROR: i64 = -32700;
/// The JSON is not a valid request object, or the request is not allowed in this state
/// (`-32600`); the exec server also uses it for an unknown or duplicate process, an unknown
/// session and handshake-order violations.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist (`-32601`).
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters (`-32602`).
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error (`-32603`).
pub const INTERNAL_ERROR: i64 = -32603;

/// The id of a request: a number or a string, echoed back in its response.
/// `Null` appears only in error responses to messages whose id could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// A numeric id (Baton's client uses increasing integers from 1).
    Number(i64),
    /// A string id.
    String(String),
    /// `null`: the id of an error answering an unreadable message.
    Null,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::String(s) => write!(f, "{s:?}"),
            Self::Null => f.write_str("null"),
        }
    }
}

/// The `error` member of an error response: `{code, message, data?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    /// Error code: the JSON-RPC codes above, or an application code such as
    /// [`crate::exec::error_codes`].
    pub code: i64,
    /// A short human-readable description.
    pub message: String,
    /// Optional extra detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// Builds an error with `code` and `message` and no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// `-32600` invalid request.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(INVALID_REQUEST, message)
    }

    /// `-32602` invalid params.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }

    /// `-32601` method not found, naming the method.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, format!("unknown method `{method}`"))
    }

    /// `-32603` internal error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(INTERNAL_ERROR, message)
    }

    /// `-32700` parse error.
    pub fn parse_error(message: impl Into<String>) -> Self {
        Self::new(PARSE_ERROR, message)
    }
}

/// A request: `{jsonrpc?, id, method, params?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The id the response will carry.
    pub id: RequestId,
    /// The method name, e.g. `process/start`.
    pub method: String,
    /// The params (`null` when absent).
    pub params: Value,
}

/// A notification: `{jsonrpc?, method, params?}` (no id, no response).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The method name, e.g. `process/output`.
    pub method: String,
    /// The params (`null` when absent).
    pub params: Value,
}

/// A response: `{jsonrpc?, id, result}` or `{jsonrpc?, id, error}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The id of the request answered (`Null` for errors about unreadable messages).
    pub id: RequestId,
    /// The result, or the error.
    pub result: Result<Value, RpcError>,
}

/// One JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A call expecting a response.
    Request(Request),
    /// A one-way message.
    Notification(Notification),
    /// The answer to a request.
    Response(Response),
}

impl Message {
    /// Parses one message from JSON text.
    ///
    /// Errors: the text is not JSON, not an object, or its keys fit no message kind.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Serialises to compact JSON text (never contains a newline, so it fits NDJSON framing).
    pub fn to_json(&self) -> String {
        // Serialising a `Value`-based message cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = Map::new();
        map.insert("jsonrpc".into(), Value::String("2.0".into()));
        match self {
            Message::Request(r) => {
                map.insert("id".into(), id_value(&r.id));
                map.insert("method".into(), Value::String(r.method.clone()));
                if !r.params.is_null() {
                    map.insert("params".into(), r.params.clone());
                }
            }
            Message::Notification(n) => {
                map.insert("method".into(), Value::String(n.method.clone()));
                if !n.params.is_null() {
                    map.insert("params".into(), n.params.clone());
                }
            }
            Message::Response(r) => {
                map.insert("id".into(), id_value(&r.id));
                match &r.result {
                    Ok(v) => {
                        map.insert("result".into(), v.clone());
                    }
                    Err(e) => {
                        map.insert(
                            "error".into(),
                            serde_json::to_value(e).map_err(serde::ser::Error::custom)?,
                        );
                    }
                }
            }
        }
        map.serialize(serializer)
    }
}

fn id_value(id: &RequestId) -> Value {
    match id {
        RequestId::Number(n) => Value::from(*n),
        RequestId::String(s) => Value::String(s.clone()),
        RequestId::Null => Value::Null,
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut map = Map::<String, Value>::deserialize(deserializer)?;
        if let Some(v) = map.remove("jsonrpc")
            && v != Value::String("2.0".into())
        {
            return Err(D::Error::custom("`jsonrpc` must be \"2.0\" when present"));
        }
        let id = match map.remove("id") {
            None => None,
            Some(v) => Some(
                RequestId::deserialize(v)
                    .map_err(|_| D::Error::custom("`id` must be a number, a string or null"))?,
            ),
        };
        let params = map.remove("params").unwrap_or(Value::Null);
        if let Some(method) = map.remove("method") {
            let Value::String(method) = method else {
                return Err(D::Error::custom("`method` must be a string"));
            };
            return Ok(match id {
                Some(id) => Message::Request(Request { id, method, params }),
                None => Message::Notification(Notification { method, params }),
            });
        }
        let id = id.ok_or_else(|| D::Error::custom("a response needs an `id`"))?;
        if let Some(error) = map.remove("error") {
            let error = RpcError::deserialize(error)
                .map_err(|e| D::Error::custom(format!("bad `error`: {e}")))?;
            return Ok(Message::Response(Response {
                id,
                result: Err(error),
            }));
        }
        match map.remove("result") {
            Some(result) => Ok(Message::Response(Response {
                id,
                result: Ok(result),
            })),
            None => Err(D::Error::custom(
                "message has neither `method`, `result` nor `error`",
            )),
        }
    }
}

/// Extracts the `id` of a JSON object that failed to parse as a [`Message`], so the error
/// response can carry it; `Null` when there is none.
pub fn salvage_id(bytes: &[u8]) -> RequestId {
    serde_json::from_slice::<Map<String, Value>>(bytes)
        .ok()
        .and_then(|mut m| m.remove("id"))
        .and_then(|v| RequestId::deserialize(v).ok())
        .unwrap_or(RequestId::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jsonrpc_field_is_optional_on_input_and_always_written() {
        let m = Message::from_slice(br#"{"id":1,"method":"initialize","params":{"a":1}}"#)
            .expect("parses without jsonrpc");
        assert_eq!(
            m,
            Message::Request(Request {
                id: RequestId::Number(1),
                method: "initialize".into(),
                params: json!({"a":1})
            })
        );
        let text = m.to_json();
        assert!(text.contains(r#""jsonrpc":"2.0""#), "{text}");
        assert_eq!(Message::from_slice(text.as_bytes()).expect("roundtrip"), m);
    }

    #[test]
    fn classifies_every_kind() {
        let n = Message::from_slice(br#"{"jsonrpc":"2.0","method":"initialized"}"#).expect("n");
        assert!(matches!(n, Message::Notification(ref n) if n.params.is_null()));
        let ok = Message::from_slice(br#"{"id":"x","result":{}}"#).expect("ok");
        assert!(matches!(
            ok,
            Message::Response(Response { result: Ok(_), .. })
        ));
        let err = Message::from_slice(br#"{"id":null,"error":{"code":-32700,"message":"bad"}}"#)
            .expect("err");
        assert_eq!(
            err,
            Message::Response(Response {
                id: RequestId::Null,
                result: Err(RpcError::parse_error("bad"))
            })
        );
    }

    #[test]
    fn rejects_wrong_version_and_shapeless_objects() {
        assert!(Message::from_slice(br#"{"jsonrpc":"1.0","id":1,"method":"m"}"#).is_err());
        assert!(Message::from_slice(br#"{"id":1}"#).is_err());
        assert!(Message::from_slice(br#"[1]"#).is_err());
        assert!(Message::from_slice(br#"{"method":3}"#).is_err());
        assert_eq!(salvage_id(br#"{"id":7,"method":3}"#), RequestId::Number(7));
        assert_eq!(salvage_id(b"{nope"), RequestId::Null);
    }
}

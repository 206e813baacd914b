//! The wire protocol between the autoscaler-agent and the vm-monitor: version negotiation,
//! then JSON text messages in two envelope shapes.
//!
//! - agent → monitor: `{"type": K, "content": {…}, "id": n}` (content nested);
//! - monitor → agent: `{"type": K, …fields…, "id": n}` (fields at the top level; the
//!   `DownscaleResult` fields are `Ok` and `Status`, capitalised, as the agent's Go struct).
//!
//! Parsing is strict about what the monitor needs (type, id, and the kind's fields) and
//! ignores unknown top-level keys. A message that fails is reported as [`Malformed`] with the
//! id when one could be read, so the monitor can answer `InvalidMessage` and go on.

use serde_json::{Map, Value, json};

/// The only protocol version: v1.0, encoded as 1.
pub const VERSION: u64 = 1;

/// CPU and memory of the VM; `mem` in bytes, `cpu` in vCPUs (only logged).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allocation {
    pub cpu: f64,
    pub mem: u64,
}

/// Agent → monitor.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    UpscaleNotification { granted: Allocation },
    DownscaleRequest { target: Allocation },
    HealthCheck,
    InvalidMessage { error: String },
    InternalError { error: String },
}

impl Inbound {
    pub fn kind(&self) -> &'static str {
        match self {
            Inbound::UpscaleNotification { .. } => "UpscaleNotification",
            Inbound::DownscaleRequest { .. } => "DownscaleRequest",
            Inbound::HealthCheck => "HealthCheck",
            Inbound::InvalidMessage { .. } => "InvalidMessage",
            Inbound::InternalError { .. } => "InternalError",
        }
    }
}

/// Monitor → agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    UpscaleConfirmation,
    DownscaleResult { ok: bool, status: String },
    HealthCheck,
    InternalError { error: String },
    UpscaleRequest,
    InvalidMessage { error: String },
}

/// A message that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The message's id, when it had a readable one.
    pub id: Option<u64>,
    pub error: String,
}

/// Parses one agent message.
pub fn parse(text: &str) -> Result<(Inbound, u64), Malformed> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Malformed { id: None, error: format!("message is not valid JSON: {e}") })?;
    let Value::Object(obj) = value else {
        return Err(Malformed { id: None, error: "message is not a JSON object".into() });
    };
    let id = match obj.get("id") {
        Some(v) => v.as_u64(),
        None => None,
    };
    let fail = |error: String| Malformed { id, error };
    let Some(id) = id else {
        return Err(fail("message has no \"id\" that is an unsigned integer".into()));
    };
    let kind = obj.get("type").and_then(Value::as_str).ok_or_else(|| fail("message has no string \"type\"".into()))?;
    let empty = Map::new();
    let content = match obj.get("content") {
        Some(Value::Object(c)) => c,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err(fail(format!("{kind}: \"content\" must be an object"))),
    };
    let msg = match kind {
        "UpscaleNotification" => Inbound::UpscaleNotification { granted: allocation(content, "granted", kind, &fail)? },
        "DownscaleRequest" => Inbound::DownscaleRequest { target: allocation(content, "target", kind, &fail)? },
        "HealthCheck" => Inbound::HealthCheck,
        "InvalidMessage" => Inbound::InvalidMessage { error: text_field(content, kind, &fail)? },
        "InternalError" => Inbound::InternalError { error: text_field(content, kind, &fail)? },
        other => return Err(fail(format!("unknown message type {other:?}"))),
    };
    Ok((msg, id))
}

fn allocation(
    content: &Map<String, Value>,
    field: &str,
    kind: &str,
    fail: &dyn Fn(String) -> Malformed,
) -> Result<Allocation, Malformed> {
    let Some(Value::Object(a)) = content.get(field) else {
        return Err(fail(format!("{kind}: content needs an object \"{field}\"")));
    };
    let cpu = a.get("cpu").and_then(Value::as_f64).filter(|c| c.is_finite() && *c >= 0.0);
    let mem = a.get("mem").and_then(Value::as_u64);
    match (cpu, mem) {
        (Some(cpu), Some(mem)) => Ok(Allocation { cpu, mem }),
        (None, _) => Err(fail(format!("{kind}: {field}.cpu must be a non-negative number of vCPUs"))),
        (_, None) => Err(fail(format!("{kind}: {field}.mem must be an unsigned integer of bytes"))),
    }
}

fn text_field(
    content: &Map<String, Value>,
    kind: &str,
    fail: &dyn Fn(String) -> Malformed,
) -> Result<String, Malformed> {
    content
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| fail(format!("{kind}: content needs a string \"error\"")))
}

/// The JSON text of an outbound message.
pub fn encode(msg: &Outbound, id: u64) -> String {
    let v = match msg {
        Outbound::UpscaleConfirmation => json!({"type": "UpscaleConfirmation", "id": id}),
        Outbound::DownscaleResult { ok, status } => {
            json!({"type": "DownscaleResult", "Ok": ok, "Status": status, "id": id})
        }
        Outbound::HealthCheck => json!({"type": "HealthCheck", "id": id}),
        Outbound::InternalError { error } => json!({"type": "InternalError", "error": error, "id": id}),
        Outbound::UpscaleRequest => json!({"type": "UpscaleRequest", "id": id}),
        Outbound::InvalidMessage { error } => json!({"type": "InvalidMessage", "error": error, "id": id}),
    };
    v.to_string()
}

/// Ids of the monitor's own requests: 3, 5, 7, … (odd; the agent's are even).
#[derive(Debug, Default)]
pub struct Ids(u64);

impl Ids {
    pub fn next(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = 1;
        }
        self.0 = self.0.wrapping_add(2) | 1;
        self.0
    }
}

/// A version as Neon prints it: `v1.0`, `<invalid: zero>`, or `v<n>` for versions it does not
/// know (Neon's own formatting of those recursed forever and aborted the process).
fn version_text(v: u64) -> String {
    match v {
        0 => "<invalid: zero>".into(),
        n => format!("v{n}.0"),
    }
}

fn range_text(min: u64, max: u64) -> String {
    if min == max { version_text(min) } else { format!("{} to {}", version_text(min), version_text(max)) }
}

/// Answers the agent's first message, `{"min":a,"max":b}`: `Ok((reply, version))` with the
/// reply `{"version":1}`, or `Err(reply)` with an `{"error": …}` object. Never panics, whatever
/// the numbers.
pub fn negotiate(text: &str) -> Result<(String, u64), String> {
    let error = |msg: String| json!({ "error": msg }).to_string();
    let value: Value = serde_json::from_str(text)
        .map_err(|e| error(format!("expected a protocol version range, got invalid JSON: {e}")))?;
    let field = |k: &str| value.get(k).and_then(Value::as_u64);
    let (Some(min), Some(max)) = (field("min"), field("max")) else {
        return Err(error(
            "expected a protocol version range {\"min\": <n>, \"max\": <n>} of unsigned integers".into(),
        ));
    };
    if min > max {
        return Err(error(format!(
            "min version = {} is greater than max version = {}",
            version_text(min),
            version_text(max)
        )));
    }
    if min <= VERSION && VERSION <= max {
        return Ok((json!({ "version": VERSION }).to_string(), VERSION));
    }
    Err(error(format!(
        "Received protocol version range {} which does not overlap with {}",
        range_text(min, max),
        version_text(VERSION)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(r#"{"min":1,"max":1}"#), Ok((r#"{"version":1}"#.into(), 1)));
        assert_eq!(negotiate(r#"{"min":1,"max":2}"#), Ok((r#"{"version":1}"#.into(), 1)));
        assert_eq!(
            negotiate(r#"{"min":0,"max":0}"#),
            Err(r#"{"error":"Received protocol version range <invalid: zero> which does not overlap with v1.0"}"#
                .into())
        );
        // Neon aborts the process on this one (stack overflow); here it is an error object.
        assert_eq!(
            negotiate(r#"{"min":2,"max":3}"#),
            Err(r#"{"error":"Received protocol version range v2.0 to v3.0 which does not overlap with v1.0"}"#.into())
        );
        assert!(negotiate(r#"{"min":3,"max":2}"#).unwrap_err().contains("greater than"));
        assert!(negotiate(r#"{"min":-1,"max":2}"#).unwrap_err().contains("unsigned"));
        assert!(negotiate("nope").unwrap_err().contains("invalid JSON"));
        assert!(negotiate(&format!(r#"{{"min":{},"max":{}}}"#, u64::MAX, u64::MAX)).is_err());
    }

    #[test]
    fn inbound_examples_from_the_reference() {
        let (m, id) =
            parse(r#"{"content":{"granted":{"cpu":2,"mem":8589934592}},"type":"UpscaleNotification","id":7}"#).unwrap();
        assert_eq!((m, id), (Inbound::UpscaleNotification { granted: Allocation { cpu: 2.0, mem: 8 << 30 } }, 7));
        let (m, _) =
            parse(r#"{"content":{"target":{"cpu":0.5,"mem":2147483648}},"type":"DownscaleRequest","id":8}"#).unwrap();
        assert_eq!(m, Inbound::DownscaleRequest { target: Allocation { cpu: 0.5, mem: 2 << 30 } });
        assert_eq!(parse(r#"{"content":{},"type":"HealthCheck","id":9,"extra":true}"#), Ok((Inbound::HealthCheck, 9)));
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        let e = parse(r#"{"type":"HealthCheck"}"#).unwrap_err();
        assert_eq!(e.id, None);
        assert!(e.error.contains("id"), "{e:?}");
        let e = parse(r#"{"type":"Bogus","content":{},"id":4}"#).unwrap_err();
        assert_eq!((e.id, e.error.as_str()), (Some(4), "unknown message type \"Bogus\""));
        let e = parse(r#"{"type":"DownscaleRequest","content":{"target":{"cpu":1,"mem":-5}},"id":6}"#).unwrap_err();
        assert!(e.error.contains("target.mem"), "{e:?}");
        assert!(parse("[1]").is_err() && parse("{").is_err());
    }

    #[test]
    fn outbound_shapes() {
        assert_eq!(
            encode(&Outbound::DownscaleResult { ok: false, status: "no".into() }, 8),
            r#"{"Ok":false,"Status":"no","id":8,"type":"DownscaleResult"}"#
        );
        assert_eq!(encode(&Outbound::UpscaleRequest, 3), r#"{"id":3,"type":"UpscaleRequest"}"#);
        let mut ids = Ids::default();
        assert_eq!([ids.next(), ids.next(), ids.next()], [3, 5, 7]);
    }
}

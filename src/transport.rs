//! The stdio transport: a framing layer in front of rmcp, so that every message gets an answer.
//!
//! ```text
//! stdin ─▶ reader ─ valid message ─▶ pipe ─▶ rmcp ─▶ pipe ─▶ pump ─┐
//!            │                                                    ▼
//!            └─ malformed: audited, then its JSON-RPC error ──▶ writer ─▶ stdout
//! ```
//!
//! The reader takes stdin one line (one message) at a time, never holding more than
//! [`MAX_LINE_BYTES`] of it, and checks each line before rmcp sees it: UTF-8, JSON nested at most
//! [`MAX_DEPTH`] deep, one JSON-RPC 2.0 object with a usable id, params of the right type, no
//! request before `initialize`, no id already in flight. A line that fails gets the error JSON-RPC
//! 2.0 §5.1 gives (-32700 parse error and -32600 invalid request with `"id": null` when the id
//! cannot be read; -32600 and -32602 invalid params with the request's id otherwise) and one audit
//! record ([`Refusal`], [`crate::audit::RecordKind::Protocol`]); a valid line goes on to rmcp
//! unchanged. A request's id counts as in flight from then until its response has been written to
//! stdout and flushed. Messages shaped as responses (`result` or `error`, no `method`) are never
//! answered, valid or not (JSON-RPC answers no response, and answering could loop); before
//! `initialize` they and notifications are dropped, and audited with no code. One writer owns
//! stdout: rmcp's messages and the reader's errors are whole lines in one queue, so they never
//! interleave. Stdout carries nothing else; logs go to stderr.
//!
//! # What this works around in rmcp 3.11 (each a fix one could offer upstream)
//!
//! - `AsyncRwTransport::receive` answers nothing for a line that is not JSON (serde_json's syntax
//!   and EOF errors: invalid JSON, invalid UTF-8, a lone surrogate escape such as `"\ud800"`,
//!   nesting past serde_json's recursion limit), on purpose (rust-sdk#938, to avoid echo storms),
//!   and only logs a line over `DEFAULT_MAX_LINE_LENGTH` (16 MiB) before dropping it: the client
//!   waits for its own timeout. Fix: answer each with -32700 and `"id": null`, as JSON-RPC 2.0
//!   requires; a storm needs a peer that answers errors, which no conforming peer does.
//! - Its -32600 for well-formed JSON that is no message always says only "Invalid request" with
//!   `"id": null`, even when the id was readable. Fix: say what is wrong, echo a readable id.
//! - The service loop keys requests in flight by the peer's id (`local_ct_pool`): a second
//!   request with the id of one still running replaces the first's entry, both handlers run, and
//!   the first response to finish removes the entry, so the other is dropped as "a response for a
//!   cancelled request". Fix: answer a request whose id is in `local_ct_pool` with -32600 and do
//!   not run it.
//! - Before `initialize`, a request other than ping or discover is answered -32602 "request _meta
//!   is missing or has malformed required fields", true only of the 2026-07-28 lifecycle and
//!   misleading to a client that forgot `initialize`; a notification or a response before it ends
//!   `serve_server` with `ExpectedInitializeRequest`, and the server with it. Fix: answer -32600
//!   naming both lifecycles; ignore (log) notifications and responses until a lifecycle started.
//! - `ClientRequest` is an untagged union ending in `CustomRequest`: a standard method whose params
//!   do not fit its type (`tools/call` with `arguments` a string or an array) falls through to
//!   `CustomRequest` and is answered -32601 method not found. Fix: for a method the union knows,
//!   answer -32602 invalid params with serde's message instead of falling through.
//!
//! rmcp's own line cap stays in place behind this one and is never reached ([`MAX_LINE_BYTES`] is
//! smaller). Batches (a JSON array) are refused with -32600: MCP removed them in 2025-06-18 and
//! rmcp does not take them.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, ClientJsonRpcMessage, ClientNotification, ClientRequest, GetMeta, InitializeRequestParams,
    JsonRpcMessage, PaginatedRequestParams, ProtocolVersion, RequestId,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, SimplexStream, WriteHalf,
};
use tokio::sync::mpsc;

/// Longest message line accepted, in bytes, not counting its newline. A longer line is answered
/// -32700 as soon as it passes the cap and the rest of it is read and thrown away, never held.
/// train.rs itself is capped at 256 KiB ([`crate::edit::MAX_FILE_BYTES`]), so any real call fits.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Deepest nesting of JSON arrays and objects accepted in a message (the message object itself is
/// level 1). Deeper is answered -32700 before any parser recurses into it.
pub const MAX_DEPTH: usize = 64;

/// JSON-RPC 2.0 error codes this layer answers with.
pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const INVALID_PARAMS: i32 = -32602;

/// Bytes of a refused line kept in its audit record.
const EXCERPT_BYTES: usize = 160;
/// The in-memory pipes between this layer and rmcp.
const PIPE_BYTES: usize = 256 * 1024;
/// Lines waiting for stdout.
const QUEUE: usize = 64;

/// The request methods rmcp's `ClientRequest` has a typed variant for: a request of one of these
/// that rmcp would parse as a `CustomRequest` has params of the wrong shape.
const KNOWN_REQUESTS: &[&str] = &[
    "ping",
    "initialize",
    "server/discover",
    "completion/complete",
    "logging/setLevel",
    "prompts/get",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "resources/directory/read",
    "subscriptions/listen",
    "tools/call",
    "tools/list",
    "tasks/get",
    "tasks/update",
    "tasks/cancel",
    "skills/list",
    "skills/get",
];

/// A message refused before it reached rmcp: what was answered and what was received.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The JSON-RPC error code answered, or `None` when JSON-RPC forbids an answer (a well-formed
    /// notification or response that came before `initialize`: logged and dropped).
    pub code: Option<i32>,
    /// The error message answered (or, unanswered, why the message was dropped).
    pub message: String,
    /// The id answered: the message's when it was readable, else null.
    pub id: Value,
    /// The message's method, when it had a string one.
    pub method: Option<String>,
    /// Bytes of the line (of a line over the cap: those read when it was refused).
    pub bytes: usize,
    /// The start of the line, decoded lossily.
    pub excerpt: String,
    /// From the end of the line to the audit record.
    pub took: Duration,
}

impl Refusal {
    fn new(code: Option<i32>, message: String, id: Value, method: Option<&str>, line: &[u8]) -> Self {
        Refusal {
            code,
            message,
            id,
            method: method.map(String::from),
            bytes: line.len(),
            excerpt: String::from_utf8_lossy(&line[..line.len().min(EXCERPT_BYTES)]).into_owned(),
            took: Duration::ZERO,
        }
    }

    /// The audit record's `args`: what was received.
    pub fn args(&self) -> Value {
        json!({"code": self.code, "method": self.method, "id": self.id, "bytes": self.bytes, "excerpt": self.excerpt})
    }

    /// The audit record's `reason`: the code and message answered.
    pub fn reason(&self) -> String {
        match self.code {
            Some(code) => format!("{code} {}", self.message),
            None => format!("not answered: {}", self.message),
        }
    }

    /// The error response, one line, when one is due.
    pub fn response(&self) -> Option<Vec<u8>> {
        let code = self.code?;
        let msg = json!({"jsonrpc": "2.0", "id": self.id, "error": {"code": code, "message": self.message}});
        let mut line = serde_json::to_vec(&msg).ok()?;
        line.push(b'\n');
        Some(line)
    }
}

/// How the layer is set up.
#[derive(Clone)]
pub struct Options {
    /// The protocol versions the server supports (`ServerHandler::supported_protocol_versions`):
    /// a request before `initialize` that carries the 2026-07-28 inline metadata of one of them
    /// starts that lifecycle in rmcp, and so here.
    pub supported_versions: Vec<ProtocolVersion>,
    /// Writes the audit record of each refusal; called off the runtime, before the answer goes out.
    pub on_refusal: Arc<dyn Fn(&Refusal) + Send + Sync>,
}

/// The transport rmcp serves on: the two ends of the in-memory pipes.
pub type Framed = (ReadHalf<SimplexStream>, WriteHalf<SimplexStream>);

/// The layer over the process's stdin and stdout; give the result to `ServiceExt::serve`.
pub fn stdio(opts: Options) -> Framed {
    framed(tokio::io::stdin(), tokio::io::stdout(), opts)
}

/// The layer over any byte streams (the tests use in-memory ones). Spawns its three tasks, which
/// end when `input` ends and rmcp has closed its side.
pub fn framed<R, W>(input: R, output: W, opts: Options) -> Framed
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (rmcp_reads, to_rmcp) = tokio::io::simplex(PIPE_BYTES);
    let (from_rmcp, rmcp_writes) = tokio::io::simplex(PIPE_BYTES);
    let (tx, rx) = mpsc::channel(QUEUE);
    let state = Arc::new(Mutex::new(State::default()));
    tokio::spawn(write_loop(output, rx, state.clone()));
    tokio::spawn(pump(from_rmcp, tx.clone()));
    tokio::spawn(read_loop(input, to_rmcp, tx, state, opts));
    (rmcp_reads, rmcp_writes)
}

#[derive(Default)]
struct State {
    /// A lifecycle started: `initialize` went to rmcp, or a request with complete inline metadata
    /// of a supported version (the 2026-07-28 lifecycle). Before, only those and `ping` pass.
    started: bool,
    /// Ids of requests given to rmcp whose response has not been written to stdout yet.
    in_flight: HashSet<RequestId>,
}

/// A line for stdout, and the request id it answers (freed once it is written).
struct Out {
    line: Vec<u8>,
    answers: Option<RequestId>,
}

/// What to do with one line.
#[derive(Debug, PartialEq)]
enum Verdict<'a> {
    /// Blank: not a message.
    Skip,
    /// Give this text to rmcp.
    Forward(&'a str),
    Refuse(Refusal),
}

// ------------------------------------------------------------------------------------------------
// The three tasks
// ------------------------------------------------------------------------------------------------

async fn read_loop<R: AsyncRead + Unpin>(
    input: R,
    mut to_rmcp: WriteHalf<SimplexStream>,
    out: mpsc::Sender<Out>,
    state: Arc<Mutex<State>>,
    opts: Options,
) {
    let mut input = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::new();
    loop {
        let frame = match next_line(&mut input, &mut line, MAX_LINE_BYTES).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("cannot read stdin: {e}");
                break;
            }
        };
        let ended = Instant::now();
        let verdict = match frame {
            Frame::Eof => break,
            Frame::TooLong { seen, .. } => {
                let mut r = Refusal::new(
                    Some(PARSE_ERROR),
                    format!(
                        "Parse error: the line is longer than {MAX_LINE_BYTES} bytes (MAX_LINE_BYTES); it was discarded"
                    ),
                    Value::Null,
                    None,
                    &line,
                );
                r.bytes = seen;
                Verdict::Refuse(r)
            }
            Frame::Line => classify(&line, &mut state.lock().unwrap(), &opts.supported_versions),
        };
        match verdict {
            Verdict::Skip => {}
            Verdict::Forward(text) => {
                let mut msg = Vec::with_capacity(text.len() + 1);
                msg.extend_from_slice(text.as_bytes());
                msg.push(b'\n');
                if to_rmcp.write_all(&msg).await.is_err() {
                    break;
                }
            }
            Verdict::Refuse(mut r) => {
                r.took = ended.elapsed();
                tracing::warn!(code = r.code, id = %r.id, bytes = r.bytes, "refused a message: {}", r.message);
                let audit = opts.on_refusal.clone();
                let rec = r.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || audit(&rec)).await {
                    tracing::error!("cannot audit a refused message: {e}");
                }
                if let Some(resp) = r.response()
                    && out.send(Out { line: resp, answers: None }).await.is_err()
                {
                    break;
                }
            }
        }
        if let Frame::TooLong { complete: false, .. } = frame
            && let Err(e) = discard_line(&mut input).await
        {
            tracing::error!("cannot read stdin: {e}");
            break;
        }
    }
    // End of input: rmcp sees the end of its input and stops.
    let _ = to_rmcp.shutdown().await;
}

/// rmcp's output to the writer, each line with the request id it answers.
async fn pump<R: AsyncRead + Unpin>(from_rmcp: R, out: mpsc::Sender<Out>) {
    let mut from_rmcp = BufReader::new(from_rmcp);
    loop {
        let mut line = Vec::new();
        match from_rmcp.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        let answers = answered_id(&line);
        if out.send(Out { line, answers }).await.is_err() {
            break;
        }
    }
}

/// The one owner of stdout. A request's id is in flight until its response has been written and
/// flushed; if stdout is gone the queue is still drained, so nobody blocks on it.
async fn write_loop<W: AsyncWrite + Unpin>(mut output: W, mut rx: mpsc::Receiver<Out>, state: Arc<Mutex<State>>) {
    let mut open = true;
    while let Some(Out { line, answers }) = rx.recv().await {
        if open {
            open = output.write_all(&line).await.is_ok() && output.flush().await.is_ok();
            if !open {
                tracing::warn!("stdout is closed; answers are dropped from now on");
            }
        }
        if let Some(id) = answers {
            state.lock().unwrap().in_flight.remove(&id);
        }
    }
}

/// The id a line of rmcp's answers: a response's or an error's (not a notification's or request's).
fn answered_id(line: &[u8]) -> Option<RequestId> {
    #[derive(Deserialize)]
    struct Outgoing {
        #[serde(default)]
        id: Option<RequestId>,
        #[serde(default)]
        method: Option<IgnoredAny>,
    }
    match serde_json::from_slice::<Outgoing>(line) {
        Ok(o) if o.method.is_none() => o.id,
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------------
// Lines
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Frame {
    /// A line is in the buffer, without its newline (the last one may have had none).
    Line,
    /// The line passed the cap after `seen` bytes; the buffer holds its start; `complete` when its
    /// newline was consumed too (else the rest is still to be discarded).
    TooLong {
        seen: usize,
        complete: bool,
    },
    Eof,
}

/// Reads one line into `buf` (cleared first), holding at most `max` bytes of it.
async fn next_line<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<Frame> {
    buf.clear();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if buf.is_empty() { Frame::Eof } else { Frame::Line });
        }
        let (take, newline) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > max {
            let seen = buf.len() + take;
            if buf.len() < EXCERPT_BYTES {
                let more = (EXCERPT_BYTES - buf.len()).min(take);
                buf.extend_from_slice(&avail[..more]);
            }
            r.consume(take + usize::from(newline));
            return Ok(Frame::TooLong { seen, complete: newline });
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(take + usize::from(newline));
        if newline {
            return Ok(Frame::Line);
        }
    }
}

/// Reads and drops the rest of a line (through its newline), a buffer at a time.
async fn discard_line<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<()> {
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(());
        }
        match avail.iter().position(|b| *b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = avail.len();
                r.consume(n);
            }
        }
    }
}

/// Whether JSON text nests arrays and objects deeper than `max` (brackets inside strings do not
/// count). Runs before any parser, so no parser ever recurses past it.
fn too_deep(text: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ------------------------------------------------------------------------------------------------
// The checks
// ------------------------------------------------------------------------------------------------

/// Checks one line (without its newline) and updates the state: ids in flight, lifecycle.
fn classify<'a>(raw: &'a [u8], st: &mut State, supported: &[ProtocolVersion]) -> Verdict<'a> {
    let line = raw.strip_suffix(b"\r").unwrap_or(raw);
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Skip;
    }
    let refuse = |code: i32, id: Value, method: Option<&str>, message: String| {
        Verdict::Refuse(Refusal::new(Some(code), message, id, method, raw))
    };
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("Parse error: not UTF-8 (byte {} starts no UTF-8 character)", e.valid_up_to());
            return refuse(PARSE_ERROR, Value::Null, None, msg);
        }
    };
    if too_deep(line, MAX_DEPTH) {
        let msg = format!("Parse error: nested deeper than {MAX_DEPTH} levels (MAX_DEPTH)");
        return refuse(PARSE_ERROR, Value::Null, None, msg);
    }
    let obj: Map<String, Value> = match serde_json::from_str::<Value>(text) {
        Err(e) => return refuse(PARSE_ERROR, Value::Null, None, format!("Parse error: {e}")),
        Ok(Value::Object(o)) => o,
        Ok(Value::Array(_)) => {
            let msg = "Invalid Request: batches (a JSON array) are not supported; send one message per line";
            return refuse(INVALID_REQUEST, Value::Null, None, msg.into());
        }
        Ok(other) => {
            let msg = format!("Invalid Request: a message is a JSON object, not {}", kind_of(&other));
            return refuse(INVALID_REQUEST, Value::Null, None, msg);
        }
    };
    let is_response = obj.contains_key("result") || obj.contains_key("error");
    if is_response && !obj.contains_key("method") {
        return response(text, raw, st);
    }
    // The id, when there is a usable one: a string or an integer, as rmcp reads it.
    let id: Option<Result<RequestId, ()>> = obj.get("id").map(|v| serde_json::from_value(v.clone()).map_err(|_| ()));
    let echo = match &id {
        Some(Ok(id)) => id.clone().into_json_value(),
        _ => Value::Null,
    };
    let method = obj.get("method");
    let method_str = method.and_then(Value::as_str);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return refuse(INVALID_REQUEST, echo, method_str, "Invalid Request: \"jsonrpc\" must be \"2.0\"".into());
    }
    if let Some(Err(())) = id {
        let msg = format!(
            "Invalid Request: \"id\" must be a string or an integer, not {}",
            obj.get("id").map(kind_of).unwrap_or("absent")
        );
        return refuse(INVALID_REQUEST, Value::Null, method_str, msg);
    }
    let Some(method) = method else {
        let msg = "Invalid Request: a message needs a \"method\" (a request or notification) or a \"result\" or \"error\" (a response)";
        return refuse(INVALID_REQUEST, echo, None, msg.into());
    };
    let Some(method) = method.as_str() else {
        let msg = format!("Invalid Request: \"method\" must be a string, not {}", kind_of(method));
        return refuse(INVALID_REQUEST, echo, None, msg);
    };
    if is_response {
        let msg = "Invalid Request: a message has a \"method\" or a \"result\"/\"error\", not both";
        return refuse(INVALID_REQUEST, echo, Some(method), msg.into());
    }
    let params = obj.get("params").filter(|p| !p.is_null());
    if let Some(p) = params
        && !p.is_object()
    {
        let msg = format!("Invalid params: \"params\" must be an object, not {}", kind_of(p));
        return refuse(INVALID_PARAMS, echo, Some(method), msg);
    }
    let Some(Ok(id)) = id else {
        return notification(text, raw, method, st);
    };

    // A request.
    if st.in_flight.contains(&id) {
        let msg = format!(
            "Invalid Request: id {echo} is already in flight; a request id may be used again only after its response"
        );
        return refuse(INVALID_REQUEST, echo, Some(method), msg);
    }
    if method == "tools/call"
        && let Some(msg) = tool_call_params(params)
    {
        return refuse(INVALID_PARAMS, echo, Some(method), msg);
    }
    let req = match serde_json::from_str::<ClientJsonRpcMessage>(text) {
        Ok(JsonRpcMessage::Request(req)) => req,
        Ok(_) => return refuse(INVALID_REQUEST, echo, Some(method), "Invalid Request: not a request".into()),
        Err(e) => return refuse(INVALID_REQUEST, echo, Some(method), format!("Invalid Request: {e}")),
    };
    if matches!(req.request, ClientRequest::CustomRequest(_)) && KNOWN_REQUESTS.contains(&method) {
        return refuse(INVALID_PARAMS, echo, Some(method), params_error(method, params));
    }
    if !st.started {
        match &req.request {
            ClientRequest::InitializeRequest(_) => st.started = true,
            ClientRequest::PingRequest(_) | ClientRequest::DiscoverRequest(_) => {}
            other => {
                // rmcp's own test for the 2026-07-28 lifecycle, which needs no initialize.
                let meta = other.get_meta();
                match meta.protocol_version() {
                    Some(v) if meta.missing_required_keys(&ProtocolVersion::V_2026_07_28).is_empty() => {
                        st.started |= supported.contains(&v);
                    }
                    _ => {
                        let msg = format!(
                            "Invalid Request: the server is not initialized: send \"initialize\" first (before it only \
                             \"ping\" is answered; a 2026-07-28 client carries the protocol version and client \
                             capabilities in params._meta instead); {method:?} was not run"
                        );
                        return refuse(INVALID_REQUEST, echo, Some(method), msg);
                    }
                }
            }
        }
    }
    st.in_flight.insert(id);
    Verdict::Forward(text)
}

/// A notification (well-formed so far): forwarded once a lifecycle started, else dropped unanswered.
fn notification<'a>(text: &'a str, raw: &[u8], method: &str, st: &mut State) -> Verdict<'a> {
    let note = match serde_json::from_str::<ClientJsonRpcMessage>(text) {
        Ok(JsonRpcMessage::Notification(n)) => n,
        Ok(_) => {
            let r = Refusal::new(
                Some(INVALID_REQUEST),
                "Invalid Request: not a notification".into(),
                Value::Null,
                Some(method),
                raw,
            );
            return Verdict::Refuse(r);
        }
        Err(e) => {
            let msg = format!("Invalid Request: {e}");
            return Verdict::Refuse(Refusal::new(Some(INVALID_REQUEST), msg, Value::Null, Some(method), raw));
        }
    };
    if !st.started {
        let msg = format!("notification {method:?} before initialize (JSON-RPC answers no notification)");
        return Verdict::Refuse(Refusal::new(None, msg, Value::Null, Some(method), raw));
    }
    // rmcp drops the response of a request the client cancelled: its id is free again.
    if let ClientNotification::CancelledNotification(c) = &note.notification
        && let Some(id) = &c.params.request_id
    {
        st.in_flight.remove(id);
    }
    Verdict::Forward(text)
}

/// A response or error from the client (to a request of the server's). Never answered, valid or
/// not: a peer that answered our errors with more malformed responses would otherwise loop.
fn response<'a>(text: &'a str, raw: &[u8], st: &mut State) -> Verdict<'a> {
    let why = match serde_json::from_str::<ClientJsonRpcMessage>(text) {
        Ok(JsonRpcMessage::Response(_) | JsonRpcMessage::Error(_)) if st.started => return Verdict::Forward(text),
        Ok(JsonRpcMessage::Response(_) | JsonRpcMessage::Error(_)) => {
            "a response before initialize, to no request (JSON-RPC answers no response)".to_string()
        }
        Ok(_) => "a malformed response (JSON-RPC answers no response)".to_string(),
        Err(e) => format!("a malformed response: {e} (JSON-RPC answers no response)"),
    };
    Verdict::Refuse(Refusal::new(None, why, Value::Null, None, raw))
}

/// What is wrong with the params of a `tools/call`, in the terms of its schema.
fn tool_call_params(params: Option<&Value>) -> Option<String> {
    let Some(p) = params else {
        return Some("Invalid params: tools/call needs params with the tool's \"name\"".into());
    };
    match p.get("name") {
        Some(Value::String(_)) => {}
        None => return Some("Invalid params: tools/call needs \"params.name\", the tool's name".into()),
        Some(other) => {
            return Some(format!(
                "Invalid params: tools/call \"params.name\" must be a string, not {}",
                kind_of(other)
            ));
        }
    }
    match p.get("arguments") {
        None | Some(Value::Null) | Some(Value::Object(_)) => None,
        Some(other) => {
            Some(format!("Invalid params: tools/call \"params.arguments\" must be an object, not {}", kind_of(other)))
        }
    }
}

/// Why a known method's params did not fit its type (serde's word for the methods this server has).
fn params_error(method: &str, params: Option<&Value>) -> String {
    let p = params.cloned().unwrap_or(Value::Null);
    let err = match method {
        "initialize" => serde_json::from_value::<InitializeRequestParams>(p).err(),
        "tools/call" => serde_json::from_value::<CallToolRequestParams>(p).err(),
        "tools/list" => serde_json::from_value::<Option<PaginatedRequestParams>>(p).err(),
        _ => None,
    };
    match err {
        Some(e) => format!("Invalid params for {method}: {e}"),
        None => format!("Invalid params: they do not fit {method}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

    fn started() -> State {
        State { started: true, ..Default::default() }
    }

    fn versions() -> Vec<ProtocolVersion> {
        ProtocolVersion::KNOWN_VERSIONS.to_vec()
    }

    /// (code, id) of a refusal, or panics.
    fn refused(line: &[u8], st: &mut State) -> (Option<i32>, Value, String) {
        match classify(line, st, &versions()) {
            Verdict::Refuse(r) => (r.code, r.id, r.message),
            other => panic!("{:?} was not refused: {other:?}", String::from_utf8_lossy(line)),
        }
    }

    #[test]
    fn parse_errors_answer_minus_32700_with_null_id() {
        let mut st = started();
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"x":{}{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for line in [
            b"not json".to_vec(),
            b"{\"jsonrpc\":\"2.0\",\"id\":1,".to_vec(),
            b"\x00\x01\xff\xfe".to_vec(),
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"params\":{\"x\":\"\xff\"}}".to_vec(),
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"e":"\ud800"}}}"#
                .to_vec(),
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"} {"again":1}"#.to_vec(),
            deep.into_bytes(),
        ] {
            let (code, id, msg) = refused(&line, &mut st);
            assert_eq!((code, id), (Some(PARSE_ERROR), Value::Null), "{msg}");
        }
        assert!(st.in_flight.is_empty());
    }

    #[test]
    fn depth_cap_counts_brackets_outside_strings_only() {
        let at_cap = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(!too_deep(at_cap.as_bytes(), MAX_DEPTH));
        let over = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(too_deep(over.as_bytes(), MAX_DEPTH));
        let in_string = format!("[\"{}\\\"{}\"]", "[".repeat(100), "{".repeat(100));
        assert!(!too_deep(in_string.as_bytes(), MAX_DEPTH));
        // A request nested right at the cap goes through.
        let mut st = started();
        let nested = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{{"a":{}{}}}}}}}"#,
            "[".repeat(MAX_DEPTH - 3),
            "]".repeat(MAX_DEPTH - 3)
        );
        assert!(matches!(classify(nested.as_bytes(), &mut st, &versions()), Verdict::Forward(_)));
    }

    #[test]
    fn invalid_requests_answer_minus_32600_echoing_a_readable_id() {
        let mut st = started();
        for (line, id) in [
            (r#"[]"#, Value::Null),
            (r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#, Value::Null),
            (r#"42"#, Value::Null),
            (r#""tools/list""#, Value::Null),
            (r#"null"#, Value::Null),
            (r#"{"jsonrpc":"1.0","id":7,"method":"tools/list"}"#, json!(7)),
            (r#"{"id":8,"method":"tools/list"}"#, json!(8)),
            (r#"{"jsonrpc":"2.0","id":9}"#, json!(9)),
            (r#"{"jsonrpc":"2.0","id":"a","method":42}"#, json!("a")),
            (r#"{"jsonrpc":"2.0","id":{"x":1},"method":"tools/list"}"#, Value::Null),
            (r#"{"jsonrpc":"2.0","id":true,"method":"tools/list"}"#, Value::Null),
            (r#"{"jsonrpc":"2.0","id":1.5,"method":"tools/list"}"#, Value::Null),
            (r#"{"jsonrpc":"2.0","id":null,"method":"tools/list"}"#, Value::Null),
            (r#"{"jsonrpc":"2.0","id":3,"method":"tools/list","result":{}}"#, json!(3)),
        ] {
            let (code, got, msg) = refused(line.as_bytes(), &mut st);
            assert_eq!((code, got), (Some(INVALID_REQUEST), id), "{line}: {msg}");
        }
    }

    #[test]
    fn responses_are_forwarded_or_dropped_never_answered() {
        let mut st = started();
        for line in [
            r#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#,
        ] {
            assert!(matches!(classify(line.as_bytes(), &mut st, &versions()), Verdict::Forward(_)), "{line}");
        }
        for line in [
            r#"{"jsonrpc":"2.0","id":3,"result":{},"error":{"code":1,"message":"x"}}"#,
            r#"{"id":1,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"result":{}}"#,
        ] {
            let (code, id, msg) = refused(line.as_bytes(), &mut st);
            assert_eq!((code, id), (None, Value::Null), "{line}: {msg}");
        }
    }

    #[test]
    fn wrong_typed_params_answer_minus_32602() {
        let mut st = started();
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_metrics","arguments":"{}"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_metrics","arguments":[1]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"read_metrics"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":[1]}"#,
        ] {
            let (code, id, msg) = refused(line.as_bytes(), &mut st);
            assert_eq!((code, id), (Some(INVALID_PARAMS), json!(1)), "{line}: {msg}");
        }
        let (_, _, msg) = refused(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_metrics","arguments":"{}"}}"#,
            &mut st,
        );
        assert!(msg.contains("\"params.arguments\" must be an object, not a string"), "{msg}");
        // A known method whose params fail its type: rmcp would take it for a custom request.
        let mut fresh = State::default();
        let bad_init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":5}}"#;
        let (code, _, msg) = refused(bad_init, &mut fresh);
        assert_eq!(code, Some(INVALID_PARAMS));
        assert!(msg.starts_with("Invalid params for initialize: "), "{msg}");
        assert!(!fresh.started, "a refused initialize starts nothing");
        // An unknown method is rmcp's to answer (-32601).
        let unknown = br#"{"jsonrpc":"2.0","id":2,"method":"tools/frobnicate","params":{"a":1}}"#;
        assert!(matches!(classify(unknown, &mut st, &versions()), Verdict::Forward(_)));
    }

    #[test]
    fn ids_in_flight_are_refused_until_their_response_is_written() {
        let mut st = started();
        let call = br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"read_metrics","arguments":{}}}"#;
        assert!(matches!(classify(call, &mut st, &versions()), Verdict::Forward(_)));
        let (code, id, msg) = refused(call, &mut st);
        assert_eq!((code, id), (Some(INVALID_REQUEST), json!(5)));
        assert!(msg.contains("id 5 is already in flight"), "{msg}");
        // 5.0 is the same id to rmcp; "5" is another.
        let float = br#"{"jsonrpc":"2.0","id":5.0,"method":"tools/list"}"#;
        assert_eq!(refused(float, &mut st).0, Some(INVALID_REQUEST));
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","id":"5","method":"tools/list"}"#, &mut st, &versions()),
            Verdict::Forward(_)
        ));
        // The response goes out: the id is free.
        let resp = br#"{"jsonrpc":"2.0","id":5,"result":{"content":[]}}"#;
        st.in_flight.remove(&answered_id(resp).unwrap());
        assert!(matches!(classify(call, &mut st, &versions()), Verdict::Forward(_)));
        // A progress notification answers nothing.
        assert_eq!(answered_id(br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#), None);
        // A cancelled request's response never comes: its id is freed when the cancel passes.
        let cancel = br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}"#;
        assert!(matches!(classify(cancel, &mut st, &versions()), Verdict::Forward(_)));
        assert!(!st.in_flight.contains(&RequestId::Number(5)));
    }

    #[test]
    fn before_initialize_only_initialize_and_ping_pass() {
        let mut st = State::default();
        let (code, id, msg) = refused(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, &mut st);
        assert_eq!((code, id), (Some(INVALID_REQUEST), json!(1)));
        assert!(msg.contains("not initialized") && msg.contains("\"initialize\" first"), "{msg}");
        // A notification or response is dropped unanswered (rmcp would have stopped serving).
        let (code, _, _) = refused(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, &mut st);
        assert_eq!(code, None);
        let (code, _, _) = refused(br#"{"jsonrpc":"2.0","id":9,"result":{}}"#, &mut st);
        assert_eq!(code, None);
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#, &mut st, &versions()),
            Verdict::Forward(_)
        ));
        assert!(!st.started);
        assert!(matches!(classify(INIT.as_bytes(), &mut st, &versions()), Verdict::Forward(_)));
        assert!(st.started);
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, &mut st, &versions()),
            Verdict::Forward(_)
        ));
        // A 2026-07-28 request with its inline metadata starts that lifecycle instead.
        let mut st = State::default();
        let inline = br#"{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
        assert!(matches!(classify(inline, &mut st, &versions()), Verdict::Forward(_)));
        assert!(st.started);
    }

    #[test]
    fn blank_lines_crlf_and_bom_are_framing_not_messages() {
        let mut st = started();
        assert_eq!(classify(b"", &mut st, &versions()), Verdict::Skip);
        assert_eq!(classify(b" \t\r", &mut st, &versions()), Verdict::Skip);
        let line = b"\xEF\xBB\xBF{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r";
        assert_eq!(
            classify(line, &mut st, &versions()),
            Verdict::Forward(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        );
    }

    #[test]
    fn refusal_response_is_one_jsonrpc_error_line() {
        let r = Refusal::new(Some(PARSE_ERROR), "Parse error: x".into(), Value::Null, None, b"junk\xff");
        let line = r.response().unwrap();
        assert!(line.ends_with(b"\n") && !line[..line.len() - 1].contains(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v, json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error: x"}}));
        assert_eq!(r.args()["excerpt"], json!("junk\u{fffd}"));
        assert_eq!(r.reason(), "-32700 Parse error: x");
        assert_eq!(Refusal { code: None, ..r }.response(), None);
    }

    #[tokio::test]
    async fn long_lines_are_refused_and_skipped_without_holding_them() {
        let mut input = Vec::new();
        input.extend(std::iter::repeat_n(b'x', 300));
        input.push(b'\n');
        input.extend_from_slice(b"next\n");
        input.extend(std::iter::repeat_n(b'y', 1000));
        let mut r = BufReader::with_capacity(64, &input[..]);
        let mut buf = Vec::new();
        match next_line(&mut r, &mut buf, 100).await.unwrap() {
            Frame::TooLong { seen, complete: false } => assert!(seen > 100 && seen <= 128, "{seen}"),
            f => panic!("{f:?}"),
        }
        assert!(buf.len() <= EXCERPT_BYTES && buf.iter().all(|b| *b == b'x'));
        discard_line(&mut r).await.unwrap();
        assert!(matches!(next_line(&mut r, &mut buf, 100).await.unwrap(), Frame::Line));
        assert_eq!(buf, b"next");
        // The last line, unterminated and over the cap: refused, then the end.
        assert!(matches!(next_line(&mut r, &mut buf, 100).await.unwrap(), Frame::TooLong { .. }));
        discard_line(&mut r).await.unwrap();
        assert!(matches!(next_line(&mut r, &mut buf, 100).await.unwrap(), Frame::Eof));
    }
}

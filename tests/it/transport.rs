//! The transport as an outside tester meets it: raw bytes on the server's stdin, every line of its
//! stdout read back. Each malformed message gets its JSON-RPC error within a second, the server
//! keeps serving, and each refusal is one audit record in a log that still verifies.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use autoresearch_mcp::transport::{INVALID_PARAMS, INVALID_REQUEST, MAX_DEPTH, MAX_LINE_BYTES, PARSE_ERROR};
use serde_json::{Value, json};

use crate::common::*;

const WITHIN: Duration = Duration::from_secs(1);

/// `autoresearch-mcp serve` with piped stdio; stdout is read one line per [`Raw::recv`], only when
/// asked, so a test can leave the server's answers unread.
struct Raw {
    child: Child,
    stdin: ChildStdin,
    ask: mpsc::Sender<()>,
    lines: mpsc::Receiver<String>,
    asked: bool,
}

impl Raw {
    fn start(ws: &Ws) -> Self {
        let mut child = Command::new(bin())
            .arg("-C")
            .arg(&ws.root)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the server");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (ask, asks) = mpsc::channel::<()>();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for () in asks {
                let mut line = String::new();
                match stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Raw { child, stdin, ask, lines, asked: false }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    fn send_json(&mut self, v: Value) {
        self.send(format!("{v}\n").as_bytes());
    }

    /// The next message (server notifications skipped) within `t`, or None.
    fn recv_within(&mut self, t: Duration) -> Option<Value> {
        let deadline = Instant::now() + t;
        loop {
            if !self.asked {
                self.ask.send(()).expect("the server's stdout closed");
                self.asked = true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the server's stdout closed"),
            };
            self.asked = false;
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout carried a line that is not JSON ({e}): {line:?}"));
            assert_eq!(v["jsonrpc"], "2.0", "{v}");
            if v.get("method").is_none() {
                return Some(v);
            }
        }
    }

    fn recv(&mut self) -> Value {
        self.recv_within(WITHIN).expect("no answer within a second")
    }

    /// Sends `bytes` and expects the error `code` with `id` back within a second.
    fn expect_error(&mut self, bytes: &[u8], code: i32, id: Value) -> String {
        let start = Instant::now();
        self.send(bytes);
        let v = self.recv_within(WITHIN).unwrap_or_else(|| {
            panic!("no answer within a second to {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)]))
        });
        assert!(start.elapsed() < WITHIN);
        assert_eq!(v["error"]["code"], code, "{:?} got {v}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)]));
        assert_eq!(v["id"], id, "{v}");
        v["error"]["message"].as_str().unwrap().to_string()
    }

    fn initialize(&mut self) {
        self.send_json(json!({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}));
        let v = self.recv();
        assert_eq!(v["id"], "init", "{v}");
        assert!(v["result"]["serverInfo"]["name"].is_string(), "{v}");
        self.send_json(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    }

    /// A valid tools/list is answered with the six tools: the server is still up and in step.
    fn tools_list_works(&mut self, id: i64) {
        self.send_json(json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}));
        let v = self.recv();
        assert_eq!(v["id"], id, "{v}");
        assert_eq!(v["result"]["tools"].as_array().map(Vec::len), Some(6), "{v}");
    }

    fn still_running(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the server exited");
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn protocol_records(ws: &Ws) -> Vec<Value> {
    audit_lines(ws).into_iter().filter(|r| r["kind"] == "protocol").collect()
}

fn audit_verifies(ws: &Ws) {
    let out = ws.cli(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}", String::from_utf8_lossy(&out.stdout));
    for cmd in [&["audit", "list"][..], &["audit", "summary"], &["audit", "list", "--tool", "protocol"]] {
        let out = ws.cli(cmd);
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("protocol"), "{cmd:?}");
    }
}

#[test]
fn malformed_messages_get_their_error_within_a_second_and_the_server_stays_up() {
    let ws = Ws::new();
    let mut s = Raw::start(&ws);
    s.initialize();
    s.tools_list_works(1);

    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{{"x":{}{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let at_cap_plus_one = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{{"x":{}{}}}}}"#,
        "[".repeat(MAX_DEPTH - 1),
        "]".repeat(MAX_DEPTH - 1)
    );
    let cases: Vec<(&str, Vec<u8>, i32, Value)> = vec![
        ("invalid JSON", b"this is not json\n".to_vec(), PARSE_ERROR, Value::Null),
        ("truncated JSON", b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/list\"\n".to_vec(), PARSE_ERROR, Value::Null),
        ("garbage bytes", b"\x00\x01\x02\xff\xfe\x80garbage\n".to_vec(), PARSE_ERROR, Value::Null),
        (
            "raw invalid UTF-8 in a string",
            b"{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/list\",\"params\":{\"x\":\"\xc3\x28\"}}\n".to_vec(),
            PARSE_ERROR,
            Value::Null,
        ),
        (
            "lone surrogate",
            br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"append_scratchpad","arguments":{"entry":"\ud800"}}}
"#
            .to_vec(),
            PARSE_ERROR,
            Value::Null,
        ),
        ("200 levels deep", format!("{deep}\n").into_bytes(), PARSE_ERROR, Value::Null),
        ("one level over the cap", format!("{at_cap_plus_one}\n").into_bytes(), PARSE_ERROR, Value::Null),
        ("two messages on a line", b"{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"ping\"} {}\n".to_vec(), PARSE_ERROR, Value::Null),
        ("empty batch", b"[]\n".to_vec(), INVALID_REQUEST, Value::Null),
        ("batch", b"[{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/list\"}]\n".to_vec(), INVALID_REQUEST, Value::Null),
        ("a number", b"42\n".to_vec(), INVALID_REQUEST, Value::Null),
        ("a string", b"\"tools/list\"\n".to_vec(), INVALID_REQUEST, Value::Null),
        ("null", b"null\n".to_vec(), INVALID_REQUEST, Value::Null),
        ("jsonrpc 1.0", b"{\"jsonrpc\":\"1.0\",\"id\":8,\"method\":\"tools/list\"}\n".to_vec(), INVALID_REQUEST, json!(8)),
        ("no jsonrpc", b"{\"id\":9,\"method\":\"tools/list\"}\n".to_vec(), INVALID_REQUEST, json!(9)),
        ("no method", b"{\"jsonrpc\":\"2.0\",\"id\":10}\n".to_vec(), INVALID_REQUEST, json!(10)),
        ("method a number", b"{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":42}\n".to_vec(), INVALID_REQUEST, json!(11)),
        ("id an object", b"{\"jsonrpc\":\"2.0\",\"id\":{\"a\":1},\"method\":\"tools/list\"}\n".to_vec(), INVALID_REQUEST, Value::Null),
        ("id a boolean", b"{\"jsonrpc\":\"2.0\",\"id\":true,\"method\":\"tools/list\"}\n".to_vec(), INVALID_REQUEST, Value::Null),
        ("id a fraction", b"{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"tools/list\"}\n".to_vec(), INVALID_REQUEST, Value::Null),
        ("id null", b"{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"tools/list\"}\n".to_vec(), INVALID_REQUEST, Value::Null),
    ];
    let mut n = 0;
    for (what, bytes, code, id) in &cases {
        let msg = s.expect_error(bytes, *code, id.clone());
        assert!(!msg.is_empty(), "{what}");
        n += 1;
        s.tools_list_works(100 + n);
    }

    // A line over the cap, its newline and a valid request in the same write: the long line is
    // answered as soon as it passes the cap, the rest of it is skipped, the next line is served.
    let mut long = br#"{"jsonrpc":"2.0","id":12,"method":"tools/list","params":{"pad":""#.to_vec();
    long.resize(MAX_LINE_BYTES + 1024, b'x');
    long.extend_from_slice(b"\"}}\n{\"jsonrpc\":\"2.0\",\"id\":13,\"method\":\"tools/list\"}\n");
    let msg = s.expect_error(&long, PARSE_ERROR, Value::Null);
    assert!(msg.contains(&MAX_LINE_BYTES.to_string()), "{msg}");
    let v = s.recv();
    assert_eq!((v["id"].clone(), v["result"]["tools"].as_array().map(Vec::len)), (json!(13), Some(6)), "{v}");
    n += 1;
    // A line of 16 MiB and more, without its newline for a while: answered before the newline comes.
    let mut huge = vec![b'{'; 1];
    huge.resize(16 * 1024 * 1024 + 10, b' ');
    let msg = s.expect_error(&huge, PARSE_ERROR, Value::Null);
    assert!(msg.contains("longer than"), "{msg}");
    s.send(b"\n");
    n += 1;
    s.tools_list_works(200);
    // Blank lines are framing, not messages: nothing comes back.
    s.send(b"\n\r\n   \n");
    assert_eq!(s.recv_within(Duration::from_millis(300)), None);
    s.tools_list_works(201);
    s.still_running();

    let recs = protocol_records(&ws);
    assert_eq!(recs.len() as i64, n, "one audit record per refused message: {recs:#?}");
    for (r, (what, _, code, _)) in recs.iter().zip(&cases) {
        assert_eq!(r["outcome"], "refused", "{what}: {r}");
        assert_eq!(r["tool"], "protocol", "{what}: {r}");
        assert_eq!(r["args"]["code"], *code, "{what}: {r}");
        assert!(r["reason"].as_str().unwrap().starts_with(&code.to_string()), "{what}: {r}");
    }
    let long_rec = &recs[cases.len()];
    assert!(long_rec["args"]["bytes"].as_u64().unwrap() > MAX_LINE_BYTES as u64, "{long_rec}");
    assert!(long_rec["args"]["excerpt"].as_str().unwrap().len() <= 200, "the audit log holds the start only");
    drop(s);
    audit_verifies(&ws);
}

#[test]
fn wrong_typed_params_are_invalid_params_not_method_not_found() {
    let ws = Ws::new();
    let mut s = Raw::start(&ws);
    s.initialize();
    let call = |id: i64, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
    let cases = [
        (
            call(1, json!({"name": "read_metrics", "arguments": "{\"last\": 1}"})),
            "\"params.arguments\" must be an object, not a string",
        ),
        (
            call(2, json!({"name": "read_metrics", "arguments": [1, 2]})),
            "\"params.arguments\" must be an object, not an array",
        ),
        (
            call(3, json!({"name": "read_metrics", "arguments": 5})),
            "\"params.arguments\" must be an object, not a number",
        ),
        (call(4, json!({"name": 7, "arguments": {}})), "\"params.name\" must be a string, not a number"),
        (call(5, json!({"arguments": {}})), "needs \"params.name\""),
        (call(6, json!("read_metrics")), "\"params\" must be an object, not a string"),
        (call(7, json!(["read_metrics", {}])), "\"params\" must be an object, not an array"),
    ];
    for (msg, want) in &cases {
        let got = s.expect_error(format!("{msg}\n").as_bytes(), INVALID_PARAMS, msg["id"].clone());
        assert!(got.contains(want), "{msg}: {got}");
    }
    // The same call with an object is served; arguments that do not fit the tool's schema are
    // rmcp's tool error (isError, so the agent can correct them), as before; an unknown method is
    // still -32601.
    s.send_json(call(8, json!({"name": "read_metrics", "arguments": {"last": 1}})));
    let v = s.recv();
    assert_eq!(v["id"], 8);
    assert_eq!(v["result"]["isError"], json!(false), "{v}");
    s.send_json(call(9, json!({"name": "read_metrics", "arguments": {"last": "one"}})));
    let v = s.recv();
    assert_eq!(v["result"]["isError"], json!(true), "{v}");
    assert!(v["result"]["content"][0]["text"].as_str().unwrap().contains("failed to deserialize parameters"), "{v}");
    s.send_json(json!({"jsonrpc": "2.0", "id": 10, "method": "tools/frobnicate", "params": {}}));
    assert_eq!(s.recv()["error"]["code"], -32601);
    s.tools_list_works(11);
    s.still_running();

    let recs = protocol_records(&ws);
    assert_eq!(recs.len(), cases.len(), "{recs:#?}");
    assert!(recs.iter().all(|r| r["args"]["code"] == INVALID_PARAMS && r["args"]["method"] == "tools/call"));
    // None of the refused calls reached the tool: read_metrics ran for id 8 only (9 stopped at
    // rmcp's argument parsing, before the tool).
    let ran = audit_lines(&ws).iter().filter(|r| r["tool"] == "read_metrics").count();
    assert_eq!(ran, 1);
    drop(s);
    audit_verifies(&ws);
}

#[test]
fn requests_before_initialize_are_refused_with_a_clear_message() {
    let ws = Ws::new();
    let mut s = Raw::start(&ws);
    let msg = s.expect_error(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\n", INVALID_REQUEST, json!(1));
    assert!(msg.contains("not initialized") && msg.contains("\"initialize\" first"), "{msg}");
    let call = json!({"jsonrpc": "2.0", "id": "c", "method": "tools/call", "params": {"name": "read_metrics", "arguments": {}}});
    s.expect_error(format!("{call}\n").as_bytes(), INVALID_REQUEST, json!("c"));
    // Malformed input before initialize is answered the same as after.
    s.expect_error(b"{oops\n", PARSE_ERROR, Value::Null);
    // A notification or a response before initialize gets no answer (JSON-RPC answers neither)
    // and does not stop the server, which rmcp alone would do.
    s.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n");
    s.send(b"{\"jsonrpc\":\"2.0\",\"id\":77,\"result\":{}}\n");
    assert_eq!(s.recv_within(Duration::from_millis(300)), None);
    // ping is answered before initialize, as the spec allows.
    s.send(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\n");
    assert_eq!(s.recv(), json!({"jsonrpc": "2.0", "id": 2, "result": {}}));
    s.still_running();
    s.initialize();
    s.tools_list_works(3);
    s.send_json(call);
    let v = s.recv();
    assert_eq!((v["id"].clone(), v["result"]["isError"].clone()), (json!("c"), json!(false)), "{v}");

    let recs = protocol_records(&ws);
    assert_eq!(recs.len(), 5, "{recs:#?}");
    assert_eq!(recs.iter().filter(|r| r["args"]["code"].is_null()).count(), 2, "the unanswered two are audited too");
    drop(s);
    audit_verifies(&ws);
}

/// The first request's answer is larger than the stdout pipe and the test does not read it, so the
/// server cannot finish writing it: its id stays in flight for certain while the duplicate arrives.
#[test]
fn a_duplicate_id_in_flight_is_refused_and_the_first_runs_once() {
    let ws = Ws::new();
    // A train.rs whose view (~200 KB) is several times a pipe's 64 KiB.
    let mut src = std::fs::read_to_string(ws.train_rs()).unwrap();
    for i in 0..2000 {
        src.push_str(&format!(
            "// padding line {i:05} so that edit_train view answers more than a pipe holds ........\n"
        ));
    }
    std::fs::write(ws.train_rs(), &src).unwrap();
    let mut s = Raw::start(&ws);
    s.initialize();

    let view = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "edit_train", "arguments": {"command": "view"}}});
    s.send(format!("{view}\n{view}\n").as_bytes());
    // The refusal is audited before it is answered: once it is in the log, the duplicate was judged.
    let deadline = Instant::now() + Duration::from_secs(10);
    // (Read as text: a line may be half written while the server appends it.)
    while !std::fs::read_to_string(ws.state("audit.jsonl")).unwrap_or_default().contains("already in flight") {
        assert!(Instant::now() < deadline, "the duplicate was not refused: {:#?}", audit_lines(&ws));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut results, mut refusals) = (vec![], vec![]);
    for _ in 0..2 {
        let v = s.recv_within(Duration::from_secs(5)).expect("both answers");
        assert_eq!(v["id"], 7, "{v}");
        if v.get("result").is_some() { results.push(v) } else { refusals.push(v) }
    }
    assert_eq!((results.len(), refusals.len()), (1, 1), "{results:?} {refusals:?}");
    assert!(results[0]["result"]["content"][0]["text"].as_str().unwrap().contains("padding line 01999"));
    assert_eq!(refusals[0]["error"]["code"], INVALID_REQUEST);
    assert!(refusals[0]["error"]["message"].as_str().unwrap().contains("id 7 is already in flight"), "{}", refusals[0]);
    assert_eq!(s.recv_within(Duration::from_millis(300)), None, "nothing else comes");
    // The view ran once; with its answer out, id 7 is free again.
    assert_eq!(audit_lines(&ws).iter().filter(|r| r["tool"] == "edit_train").count(), 1);
    s.tools_list_works(7);
    s.still_running();
    drop(s);
    assert_eq!(protocol_records(&ws).len(), 1);
    audit_verifies(&ws);
}

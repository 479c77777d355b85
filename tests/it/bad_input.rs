//! Bad input over real HTTP: a corpus of malformed transaction bodies, hostile IDs, oversized
//! bodies, slow clients, wrong methods and path traversal. Each gets a spec error (or, for a
//! bad event inside a good transaction, is skipped), nothing is stored half-way, and the server
//! stays up. Registrations and configs get a clear message naming the problem, never a panic.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{
    HS_TOKEN, Running, fresh_database, http, postgres_url, put_txn, registration_yaml, txn_body,
};

fn event(id: &str) -> String {
    serde_json::json!({
        "event_id": id, "room_id": "!r:localhost", "sender": "@a:localhost",
        "type": "m.room.message", "content": {"msgtype": "m.text", "body": "x"},
    })
    .to_string()
}

async fn put_raw(client: &reqwest::Client, base: &str, txn: &str, body: Vec<u8>) -> (u16, String) {
    let r = client
        .put(format!("{base}/_matrix/app/v1/transactions/{txn}"))
        .bearer_auth(HS_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    (status, v["errcode"].as_str().unwrap_or("").to_owned())
}

/// Malformed bodies: each refused with 400 and the right errcode, none stores its valid prefix.
#[tokio::test]
async fn malformed_transaction_corpus_gets_spec_errors_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let app = Running::start(&db, "{}").await;
    let client = http();
    let base = app.url("");
    let ok = event("$half");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut bad_utf8 = format!(r#"{{"events":[{ok},{{"event_id":"$x","body":""#).into_bytes();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, b'"', b'}', b']', b'}']);
    let corpus: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty body", b"".to_vec(), "M_NOT_JSON"),
        ("not JSON", b"hello".to_vec(), "M_NOT_JSON"),
        (
            "truncated after a valid event",
            format!(r#"{{"events":[{ok}"#).into_bytes(),
            "M_NOT_JSON",
        ),
        ("events is an object", br#"{"events":{}}"#.to_vec(), "M_BAD_JSON"),
        ("events is a string", br#"{"events":"$half"}"#.to_vec(), "M_BAD_JSON"),
        ("events missing", br#"{"ephemeral":[]}"#.to_vec(), "M_BAD_JSON"),
        ("top level is an array", format!("[{ok}]").into_bytes(), "M_BAD_JSON"),
        ("top level is null", b"null".to_vec(), "M_BAD_JSON"),
        (
            "duplicate events key",
            format!(r#"{{"events":[{ok}],"events":[]}}"#).into_bytes(),
            "M_BAD_JSON",
        ),
        (
            "ephemeral of the wrong type",
            format!(r#"{{"events":[{ok}],"ephemeral":5}}"#).into_bytes(),
            "M_BAD_JSON",
        ),
        ("bad UTF-8 in a string", bad_utf8, "M_NOT_JSON"),
        ("100000 levels of nesting", deep.into_bytes(), "M_BAD_JSON"),
        (
            "trailing garbage after a valid transaction",
            format!(r#"{{"events":[{ok}]}} {{"#).into_bytes(),
            "M_NOT_JSON",
        ),
    ];
    let mut figures = Vec::new();
    for (i, (what, body, errcode)) in corpus.into_iter().enumerate() {
        let (status, got) = put_raw(&client, &base, &format!("bad{i}"), body).await;
        figures.push(format!("{what}: {status} {got}"));
        assert_eq!((status, got.as_str()), (400, errcode), "{what}");
    }
    let stats = app.store.inbox_stats().await.unwrap();
    println!("malformed-corpus: {} bodies refused; {}", figures.len(), figures.join("; "));
    assert_eq!(stats.pending, 0, "nothing stored half-way: {stats:?}");
    assert!(app.store.inbox_status("$half").await.unwrap().is_none());
    // Still serving.
    assert_eq!(
        put_txn(&client, &base, "after", &txn_body(&[("!r:localhost", "$after")])).await,
        200
    );
    app.stop().await;
}

/// Bad events inside a good transaction are skipped; the good ones are stored. IDs with
/// control characters, huge IDs and wrong field types must not fail the whole transaction
/// (the homeserver would retry it forever) on either backend.
async fn hostile_events_are_skipped_and_the_rest_stored(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(backend, dir.path()).await;
    let app = Running::start(&db, "{}").await;
    let client = http();
    let base = app.url("");
    let e = |id: &str, room: &str, sender: &str| serde_json::json!({"event_id": id, "room_id": room, "sender": sender, "type": "m.t", "content": {}});
    let hostile = vec![
        e("$nul\u{0}id", "!r:localhost", "@a:localhost"),
        e("$ok1", "!r\u{0}x:localhost", "@a:localhost"),
        e("$ok2", "!r:localhost", "@a\u{0}b:localhost"),
        e(&format!("${}", "a".repeat(300_000)), "!r:localhost", "@a:localhost"),
        e("$ok3", "!r:localhost", &format!("@{}:localhost", "a".repeat(300))),
        e("no-sigil", "!r:localhost", "@a:localhost"),
        e("$ok4", "", "@a:localhost"),
        serde_json::json!({"event_id": 5, "room_id": "!r:localhost", "sender": "@a:localhost", "type": "m.t"}),
        serde_json::json!({"event_id": "$ok5", "room_id": ["!r:localhost"], "sender": "@a:localhost", "type": "m.t"}),
        serde_json::json!({"event_id": "$ok6", "room_id": "!r:localhost", "sender": "@a:localhost", "type": ""}),
        serde_json::json!({"event_id": "$ok7", "room_id": "!r:localhost", "sender": "@a:localhost", "type": "m.t", "state_key": 7}),
        serde_json::json!(["not", "an", "object"]),
        serde_json::json!(null),
        // Valid envelopes with hostile content: stored as sent (the bridge parses content).
        serde_json::json!({"event_id": "$nulcontent", "room_id": "!r:localhost", "sender": "@a:localhost", "type": "m.t", "content": {"body": "a\u{0}b\u{fffe}"}}),
        serde_json::from_str(&format!(
            r#"{{"event_id":"$deepcontent","room_id":"!r:localhost","sender":"@a:localhost","type":"m.t","content":{}1{}}}"#,
            "[".repeat(120),
            "]".repeat(120)
        ))
        .unwrap(),
        serde_json::json!({"event_id": "$good", "room_id": "!r:localhost", "sender": "@a:localhost", "type": "m.t", "content": {"body": "x".repeat(2_000_000)}}),
    ];
    let body = serde_json::json!({ "events": hostile }).to_string();
    // Lone surrogates are valid JSON escapes but not Unicode.
    let body = body.replace("$nulcontent\"", "$nulcontent\",\"x\":\"\\ud800\"");
    let (status, errcode) = put_raw(&client, &base, "hostile", body.into_bytes()).await;
    let stored: Vec<&str> = {
        let mut v = Vec::new();
        for id in [
            "$nulcontent",
            "$deepcontent",
            "$good",
            "$ok1",
            "$ok2",
            "$ok3",
            "$ok4",
            "$ok5",
            "$ok6",
            "$ok7",
        ] {
            if app.store.inbox_status(id).await.unwrap().is_some() {
                v.push(id);
            }
        }
        v
    };
    println!("hostile-events[{backend}]: status={status} {errcode} stored={stored:?}");
    assert_eq!(status, 200, "one bad event must not fail the transaction: {errcode}");
    assert_eq!(stored, ["$nulcontent", "$deepcontent", "$good"]);
    let handled = crate::common::wait_until(10, || {
        let h = app.bridge.handled_ids();
        h.contains(&"$good".to_owned()) && h.contains(&"$nulcontent".to_owned())
    })
    .await;
    assert!(handled, "handled: {:?}", app.bridge.handled_ids());
    app.stop().await;
}

#[tokio::test]
async fn hostile_events_are_skipped_sqlite() {
    hostile_events_are_skipped_and_the_rest_stored("sqlite").await;
}

#[tokio::test]
async fn hostile_events_are_skipped_postgres() {
    if postgres_url().is_none() {
        eprintln!("skipped: set MXBRIDGE_TEST_POSTGRES to run the PostgreSQL suite");
        return;
    }
    hostile_events_are_skipped_and_the_rest_stored("postgres").await;
}

/// A running app with a short request timeout and a small body limit.
async fn strict_app(dir: &std::path::Path) -> Running {
    let db = fresh_database("sqlite", dir).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Running::start_on_with(
        listener,
        "http://127.0.0.1:1",
        &db,
        "{}",
        &registration_yaml("null"),
        "  request_timeout_secs: 2\n  max_body_bytes: 65536\n",
        "",
    )
    .await
}

/// Writes `bytes` one at a time, `gap` apart, until the server closes or answers; returns
/// what the server sent and when.
async fn trickle(addr: std::net::SocketAddr, bytes: &[u8], gap: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for b in bytes {
        if sock.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::select! {
            n = sock.read(&mut buf) => {
                let n = n.unwrap_or(0);
                return (String::from_utf8_lossy(&buf[..n]).into_owned(), started.elapsed());
            }
            () = tokio::time::sleep(gap) => {}
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
        .await
        .map_or(0, |r| r.unwrap_or(0));
    (String::from_utf8_lossy(&buf[..n]).into_owned(), started.elapsed())
}

#[tokio::test]
async fn slowloris_headers_and_bodies_are_cut_off_by_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let app = strict_app(dir.path()).await;
    let body = txn_body(&[("!r:localhost", "$slow")]);
    let head = format!(
        "PUT /_matrix/app/v1/transactions/slow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \
         {HS_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // Slow body: headers at once, then a byte every 100 ms (the whole body would take ~20 s).
    let slow_body = {
        let addr = app.addr;
        let head = head.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            sock.write_all(head.as_bytes()).await.unwrap();
            trickle_on(sock, body.as_bytes(), Duration::from_millis(100)).await
        })
    };
    // Slow headers: a byte every 100 ms (~20 s for the head alone).
    let (answer, took) = trickle(app.addr, head.as_bytes(), Duration::from_millis(100)).await;
    let (body_answer, body_took) = slow_body.await.unwrap();
    println!(
        "slowloris: slow headers cut after {:.1}s ({:?}); slow body cut after {:.1}s ({:?})",
        took.as_secs_f64(),
        answer.lines().next().unwrap_or("closed"),
        body_took.as_secs_f64(),
        body_answer.lines().next().unwrap_or("closed"),
    );
    assert!(took < Duration::from_secs(6), "slow headers held the connection {took:?}");
    assert!(body_took < Duration::from_secs(6), "slow body held the connection {body_took:?}");
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer}");
    assert!(body_answer.contains(r#""errcode":"M_UNKNOWN""#), "Matrix error shape: {body_answer}");
    assert!(app.store.inbox_status("$slow").await.unwrap().is_none());
    // A slow client does not hold up shutdown either.
    let stuck = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut stuck = stuck;
    stuck.write_all(b"PUT /_matrix/app/v1/transactions/x HTTP/1.1\r\nhost").await.unwrap();
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop()).await.expect("shutdown hung");
    println!("slowloris: shutdown with a half-sent request took {:.1}s", t.elapsed().as_secs_f64());
}

async fn trickle_on(
    mut sock: tokio::net::TcpStream,
    bytes: &[u8],
    gap: Duration,
) -> (String, Duration) {
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    for b in bytes {
        if sock.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::select! {
            n = sock.read(&mut buf) => {
                let n = n.unwrap_or(0);
                return (String::from_utf8_lossy(&buf[..n]).into_owned(), started.elapsed());
            }
            () = tokio::time::sleep(gap) => {}
        }
    }
    (String::new(), started.elapsed())
}

#[tokio::test]
async fn oversized_bodies_wrong_methods_and_path_traversal_get_spec_errors() {
    let dir = tempfile::tempdir().unwrap();
    let app = strict_app(dir.path()).await;
    let client = http();
    let base = app.url("");
    let mut figures = Vec::new();
    // Oversized, with a content-length and chunked (no length).
    let big = format!(
        r#"{{"events":[{{"event_id":"$big","room_id":"!r:localhost","sender":"@a:localhost","type":"t","content":{{"b":"{}"}}}}]}}"#,
        "x".repeat(200_000)
    );
    let (s, e) = put_raw(&client, &base, "big", big.clone().into_bytes()).await;
    figures.push(format!("oversized: {s} {e}"));
    assert_eq!((s, e.as_str()), (413, "M_TOO_LARGE"));
    // Chunked, no content-length: the limit applies while streaming.
    let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "PUT /_matrix/app/v1/transactions/bigchunked HTTP/1.1\r\nhost: x\r\nauthorization: \
         Bearer {HS_TOKEN}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    for chunk in big.as_bytes().chunks(8192) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if sock.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    figures.push(format!("oversized chunked: {}", out.lines().next().unwrap_or("")));
    assert!(out.starts_with("HTTP/1.1 413") && out.contains("M_TOO_LARGE"), "{out}");
    assert!(app.store.inbox_status("$big").await.unwrap().is_none());

    // Wrong methods on every appservice route: 405 with the Matrix error shape.
    for (method, path) in [
        (reqwest::Method::GET, "/_matrix/app/v1/transactions/1"),
        (reqwest::Method::POST, "/_matrix/app/v1/transactions/1"),
        (reqwest::Method::DELETE, "/_matrix/app/v1/transactions/1"),
        (reqwest::Method::PUT, "/_matrix/app/v1/users/@a:localhost"),
        (reqwest::Method::GET, "/_matrix/app/v1/ping"),
    ] {
        let r = client.request(method.clone(), format!("{base}{path}")).bearer_auth(HS_TOKEN);
        let r = r.send().await.unwrap();
        let s = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        figures.push(format!("{method} {path}: {s}"));
        assert_eq!((s, v["errcode"].as_str()), (405, Some("M_UNRECOGNIZED")), "{method} {path}");
    }

    // Path traversal in IDs: encoded, the ID is one (invalid) parameter; literal, no route.
    for path in [
        "/_matrix/app/v1/users/..%2F..%2Fetc",
        "/_matrix/app/v1/users/..%2F..%2Fetc%2Fpasswd",
        "/_matrix/app/v1/rooms/%2E%2E%2F%2E%2E%2Fetc",
        "/_matrix/app/v1/thirdparty/protocol/..%2F..%2Fetc",
        "/_matrix/app/v1/users/%00",
    ] {
        let r = client.get(format!("{base}{path}")).bearer_auth(HS_TOKEN).send().await.unwrap();
        let s = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        figures.push(format!("GET {path}: {s} {}", v["errcode"]));
        assert!(matches!(s, 400 | 404) && v["errcode"].is_string(), "{path}: {s} {v}");
    }
    for raw_path in ["/_matrix/app/v1/users/../../../etc/passwd", "/../../etc/passwd"] {
        let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let req = format!(
            "GET {raw_path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {HS_TOKEN}\r\nconnection: close\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        sock.read_to_string(&mut out).await.unwrap();
        let status = out.lines().next().unwrap_or("").to_owned();
        figures.push(format!("raw GET {raw_path}: {status}"));
        assert!(status.contains(" 404 ") || status.contains(" 400 "), "{raw_path}: {out}");
        assert!(!out.contains("root:"), "{raw_path} served a file");
    }
    // A txn ID with a NUL: refused, not a database error.
    let (s, e) =
        put_raw(&client, &base, "a%00b", txn_body(&[("!r:localhost", "$nul")]).into_bytes()).await;
    figures.push(format!("PUT transactions/a%00b: {s} {e}"));
    assert_eq!((s, e.as_str()), (400, "M_INVALID_PARAM"));
    // A traversal-looking txn ID is only a string: stored under that ID, nothing else happens.
    let s = put_txn(&client, &base, "..%2F..%2Fetc", &txn_body(&[("!r:localhost", "$trav")])).await;
    assert_eq!(s, 200);
    println!("http-bad-input: {}", figures.join("; "));
    app.stop().await;
}

/// Bad registrations and configs: an error that names the problem, never a panic.
#[test]
fn bad_registrations_and_configs_get_clear_messages() {
    let good = registration_yaml("null");
    assert!(mxbridge::Registration::from_yaml(&good).is_ok());
    let deep = format!("id: {}{}", "[".repeat(50_000), "]".repeat(50_000));
    let huge = format!("id: {}\n", "x".repeat(5_000_000));
    let cases: Vec<(String, &str)> = vec![
        (String::new(), ""),
        ("- a\n- b\n".into(), ""),
        (good.replace("as_token: ", "as_token: [1, 2]\nx: "), "as_token"),
        (good.replace("hs_token: hs_token_for_tests_0123456789", "hs_token: 5"), "hs_token"),
        (good.replace("regex: '@_t_.*:localhost'", "regex: '@_t_(:localhost'"), "regex"),
        (good.replace("regex: '@_t_.*:localhost'", "regex: {a: 1}"), "regex"),
        (good.replace("exclusive: true", "exclusive: maybe"), "exclusive"),
        (format!("{good}id: twice\n"), "id"),
        (
            good.replace("sender_localpart: _t_bot", "sender_localpart: 'BAD BOT'"),
            "sender_localpart",
        ),
        (good.replace("as_token: as_token_for_tests_0123456789", "as_token: ''"), "as_token"),
        (deep, ""),
        (huge, ""),
        ("id: \"\\ud800\"\n".into(), ""),
        ("a: &a [*a]\n".into(), ""),
        ("&a a: *a\n".into(), ""),
    ];
    let mut figures = Vec::new();
    for (i, (yaml, key)) in cases.iter().enumerate() {
        let r = std::panic::catch_unwind(|| mxbridge::Registration::from_yaml(yaml));
        let r = r.unwrap_or_else(|_| panic!("registration case {i} panicked"));
        let err = r.err().unwrap_or_else(|| panic!("registration case {i} was accepted"));
        let msg = err.to_string();
        assert!(msg.contains(key), "registration case {i}: {msg:?} does not name {key}");
        assert!(!msg.contains("hs_token_for_tests"), "a token in the message: {msg}");
        figures.push(msg.chars().take(60).collect::<String>());
    }
    // Configs.
    let good = crate::common::config_yaml("http://127.0.0.1:1", 9, "sqlite::memory:", "{}");
    type C = mxbridge::Config<crate::common::RecorderConfig>;
    assert!(C::from_yaml(&good).is_ok());
    let cases: Vec<(String, &str)> = vec![
        (good.replace("port: 9", "port: 70000"), "port"),
        (good.replace("port: 9", "port: nine"), "port"),
        (good.replace("domain: localhost", "domain: 'bad domain'"), "domain"),
        (good.replace("address: 'http://127.0.0.1:1'", "address: 'ftp://x'"), "homeserver.address"),
        (good.replace("max_attempts: 3", "max_attempts: -1"), "max_attempts"),
        (good.replace("retry_base_ms: 20", "retry_base_ms: 1e999"), "retry_base_ms"),
        (format!("{good}unknown_section: 1\n"), "unknown_section"),
        (good.replace("bridge: {}", "bridge: {delay_ms: 'soon'}"), "delay_ms"),
        (
            good.replace(
                "bridge: {}",
                &format!("bridge: {}{}", "[".repeat(50_000), "]".repeat(50_000)),
            ),
            "",
        ),
    ];
    for (i, (yaml, key)) in cases.iter().enumerate() {
        let r = std::panic::catch_unwind(|| C::from_yaml(yaml));
        let r = r.unwrap_or_else(|_| panic!("config case {i} panicked"));
        let msg = r.err().unwrap_or_else(|| panic!("config case {i} was accepted")).to_string();
        assert!(msg.contains(key), "config case {i}: {msg:?} does not name {key}");
        figures.push(msg.chars().take(60).collect::<String>());
    }
    // Bad UTF-8 in a file: an I/O error naming the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reg.yaml");
    std::fs::write(&path, b"id: \xff\xfe\n").unwrap();
    let msg = mxbridge::Registration::load(&path).unwrap_err().to_string();
    assert!(msg.contains("reg.yaml"), "{msg}");
    let msg = C::load(&path).unwrap_err().to_string();
    assert!(msg.contains("reg.yaml"), "{msg}");
    println!("bad-config-corpus: {} cases, each a message: {figures:?}", figures.len());
}

//! Tokens never reach the logs or error bodies. A child process (the pattern of `crash.rs`)
//! runs a full flow with every log at TRACE into stderr: transactions with the hs_token in the
//! header and in the legacy query parameter, refused tokens, a ping, outgoing sends as the bot
//! and as a ghost (with retries), and the registration's `Debug`. The parent greps it all.

use std::{process::Command, time::Duration};

use axum::{Json, Router, routing::put};

use crate::common::{
    AS_TOKEN, HS_TOKEN, Running, fresh_database, http, registration_yaml, txn_body,
};

#[test]
fn secrets_child_entry_point() {
    if std::env::var("MXB_SECRETS_CHILD").is_err() {
        return;
    }
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Runtime::new().unwrap().block_on(full_flow());
}

async fn full_flow() {
    // A homeserver stub that answers a send with 503 once, then 200.
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = Router::new().route(
        "/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}",
        put(move || {
            let failed = failed.clone();
            async move {
                if !failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        Json(serde_json::json!({"errcode": "M_UNKNOWN", "error": "busy"})),
                    );
                }
                (axum::http::StatusCode::OK, Json(serde_json::json!({"event_id": "$sent"})))
            }
        }),
    );
    let hs = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hs_url = format!("http://{}", hs.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(hs, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registration = registration_yaml("null");
    let app = Running::start_on(listener, &hs_url, &db, "{}", &registration).await;
    let reg = mxbridge::Registration::from_yaml(&registration).unwrap();
    tracing::info!(?reg, "registration debug");
    let client = http();
    let base = app.url("");
    let body = txn_body(&[("!r:localhost", "$e1")]);
    let url = |q: &str| format!("{base}/_matrix/app/v1/transactions/1{q}");
    let r = client.put(url("")).bearer_auth(HS_TOKEN).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let q = format!("?access_token={HS_TOKEN}");
    let r = client.put(url(&q)).body(txn_body(&[("!r:localhost", "$e2")])).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let wrong = format!("?access_token={HS_TOKEN}x");
    let r = client.put(url(&wrong)).body(body.clone()).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains(HS_TOKEN), "error body echoes the token: {text}");
    let r = client.put(url("")).bearer_auth(AS_TOKEN).body(body.clone()).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains(AS_TOKEN), "error body echoes the token: {text}");
    let r = client
        .post(format!("{base}/_matrix/app/v1/ping"))
        .bearer_auth(HS_TOKEN)
        .json(&serde_json::json!({"transaction_id": "p1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ctx = app.bridge.ctx.clone();
    let room: ruma::OwnedRoomId = "!r:localhost".try_into().unwrap();
    let ghost: ruma::OwnedUserId = "@_t_ghost:localhost".try_into().unwrap();
    let content = ruma::events::room::message::RoomMessageEventContent::text_plain("hi");
    let send = || {
        let txn_id = mxbridge::client::new_txn_id();
        ruma::api::client::message::send_message_event::v3::Request::new(
            room.clone(),
            txn_id,
            &content,
        )
        .unwrap()
    };
    ctx.client().send(send(), Some(&ghost)).await.unwrap();
    ctx.client().send(send(), None).await.unwrap();
    assert!(crate::common::wait_until(5, || app.bridge.handled_ids().len() == 2).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.stop().await;
    eprintln!("FLOW COMPLETE");
}

#[test]
fn tokens_never_appear_in_trace_logs_of_a_full_flow() {
    if std::env::var("MXB_SECRETS_CHILD").is_ok() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["secrets::secrets_child_entry_point", "--exact", "--nocapture", "--test-threads=1"])
        .env("MXB_SECRETS_CHILD", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let logs =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && logs.contains("FLOW COMPLETE"), "the flow failed:\n{logs}");
    let lines = logs.lines().count();
    let leaks: Vec<&str> =
        logs.lines().filter(|l| l.contains(HS_TOKEN) || l.contains(AS_TOKEN)).collect();
    // Make sure the capture saw what it should have: the server, the store, the client.
    let seen = ["transaction stored", "txn", "send", "registration debug", "retry"];
    for s in seen {
        assert!(logs.contains(s), "the capture missed `{s}`");
    }
    let debug_line = logs.lines().find(|l| l.contains("registration debug")).unwrap();
    println!(
        "secrets-in-logs: {lines} lines at TRACE, {} with a token; registration Debug: {}",
        leaks.len(),
        debug_line.chars().take(160).collect::<String>()
    );
    assert!(leaks.is_empty(), "tokens in the logs:\n{}", leaks.join("\n"));
}

/// The registration holds both tokens: written owner-only, also over an existing file that was
/// readable by others.
#[test]
fn registration_file_is_written_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registration.yaml");
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let reg = mxbridge::Registration::from_yaml(&registration_yaml("null")).unwrap();
    reg.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    println!("registration-file-mode: {mode:o}");
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&path).unwrap().contains(HS_TOKEN));
}

/// sqlx 0.9 takes only `&'static str` SQL unless wrapped in `AssertSqlSafe`; with no such
/// wrapper in the library, no SQL text is built from input: values go in bound parameters.
#[test]
fn library_sql_is_static_text_with_bound_parameters() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    !text.contains("AssertSqlSafe"),
                    "{} builds SQL at run time",
                    path.display()
                );
            }
        }
    }
    assert!(files > 10, "scanned {files} files");
}

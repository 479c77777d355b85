//! The webhook reference bridge end to end, against a real Synapse and a real client.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use mxbridge::{AppService, Config, Registration};
use ruma::serde::{Base64, base64::Standard};
use serde_json::{Value, json};

use crate::{
    common::{config_yaml, fresh_database, http, registration_yaml},
    synapse::{Synapse, cs, enabled, urlencode},
};

#[path = "../../examples/webhook.rs"]
pub(crate) mod example;

pub(crate) struct Bridge {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<mxbridge::Result<()>>,
}

async fn start_bridge(port: u16, hs: &str, db_url: &str, registration: &str) -> Bridge {
    start_bridge_with(port, hs, db_url, registration, "").await
}

/// Starts the webhook bridge with more top-level config (`double_puppet: ...`).
pub(crate) async fn start_bridge_with(
    port: u16,
    hs: &str,
    db_url: &str,
    registration: &str,
    extra: &str,
) -> Bridge {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let yaml = format!("{}{extra}", config_yaml(hs, port, db_url, "{}"));
    let config: Config<example::WebhookConfig> = Config::from_yaml(&yaml).unwrap();
    let service =
        AppService::<example::Webhook>::new(config, Registration::from_yaml(registration).unwrap())
            .await
            .unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(service.run(listener, async move {
        let _ = rx.await;
    }));
    Bridge { stop, task }
}

impl Bridge {
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A receiver for outgoing webhooks on loopback: its URL, and what was POSTed to it.
pub(crate) async fn outgoing_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let receiver = Router::new()
        .route(
            "/in",
            post(|State(r): State<Arc<Mutex<Vec<Value>>>>, Json(v): Json<Value>| async move {
                r.lock().unwrap().push(v);
            }),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/in", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    (url, received)
}

/// Polls the room's recent messages until one matches.
pub(crate) async fn wait_for_message(
    client: &reqwest::Client,
    hs: &str,
    room: &str,
    token: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..150 {
        let url =
            format!("{hs}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=30", urlencode(room));
        let page = cs(client, reqwest::Method::GET, url, token, None).await;
        if let Some(ev) = page["chunk"].as_array().unwrap().iter().find(|e| pred(e)) {
            return ev.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no matching message in {room}");
}

pub(crate) async fn say(
    client: &reqwest::Client,
    hs: &str,
    room: &str,
    token: &str,
    body: &str,
) -> String {
    let url = format!(
        "{hs}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
        urlencode(room),
        mxbridge::Secret::generate(12).expose()
    );
    let sent = cs(
        client,
        reqwest::Method::PUT,
        url,
        token,
        Some(json!({"msgtype": "m.text", "body": body})),
    )
    .await;
    sent["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn webhook_bridge_posts_as_ghost_relays_out_maps_edits_and_survives_restart() {
    if !enabled() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let registration = registration_yaml(&format!("http://127.0.0.1:{port}"));
    let synapse = Synapse::start(&registration);
    let hs = synapse.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let bridge = start_bridge(port, &hs, &db.url, &registration).await;
    let client = http();
    let alice = synapse.register("alice");

    // A receiver for the outgoing side.
    let (out_url, received) = outgoing_receiver().await;

    // Invite the bot; it accepts by itself.
    let room = cs(
        &client,
        reqwest::Method::POST,
        format!("{hs}/_matrix/client/v3/createRoom"),
        &alice,
        Some(json!({"preset": "private_chat", "invite": ["@_t_bot:localhost"]})),
    )
    .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..100 {
        let url = format!("{hs}/_matrix/client/v3/rooms/{}/joined_members", urlencode(&room));
        if cs(&client, reqwest::Method::GET, url, &alice, None).await["joined"]["@_t_bot:localhost"]
            .is_object()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `help` is generated; `create` answers with the secret URL.
    say(&client, &hs, &room, &alice, "!webhook help").await;
    wait_for_message(&client, &hs, &room, &alice, |e| {
        e["content"]["body"].as_str().is_some_and(|b| b.contains("!webhook outgoing NAME URL"))
    })
    .await;
    say(&client, &hs, &room, &alice, "!webhook create hook1").await;
    let reply = wait_for_message(&client, &hs, &room, &alice, |e| {
        e["sender"] == "@_t_bot:localhost"
            && e["content"]["body"].as_str().is_some_and(|b| b.contains("/webhook/"))
    })
    .await;
    let body = reply["content"]["body"].as_str().unwrap();
    let hook_url = body[body.find("http://").unwrap()..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_owned();

    // A POST becomes a ghost's message with the given name.
    let res = client
        .post(&hook_url)
        .json(&json!({"text": "build passed", "username": "CI Bot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let event_id = res.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned();
    let ghost = "@_t__c_i=20_bot:localhost";
    let url =
        format!("{hs}/_matrix/client/v3/rooms/{}/event/{}", urlencode(&room), urlencode(&event_id));
    let ev = cs(&client, reqwest::Method::GET, url, &alice, None).await;
    assert_eq!(
        (ev["sender"].as_str(), ev["content"]["body"].as_str()),
        (Some(ghost), Some("build passed"))
    );
    let url = format!(
        "{hs}/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        urlencode(&room),
        urlencode(ghost)
    );
    assert_eq!(cs(&client, reqwest::Method::GET, url, &alice, None).await["displayname"], "CI Bot");

    // The poster can edit and delete what it posted, by the ID the answer gave.
    let posted = client
        .post(&hook_url)
        .json(&json!({"text": "deploy started", "username": "CI Bot", "id": "deploy-7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let posted: Value = posted.json().await.unwrap();
    assert_eq!(posted["id"], "deploy-7");
    let original = posted["event_id"].as_str().unwrap().to_owned();
    // The same ID again is the same message: nothing new is posted.
    let again = client
        .post(&hook_url)
        .json(&json!({"text": "deploy started", "username": "CI Bot", "id": "deploy-7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let edited = client
        .post(&hook_url)
        .json(&json!({"edits": "deploy-7", "text": "deploy finished", "username": "CI Bot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), 200);
    let edit_id = edited.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned();
    let url =
        format!("{hs}/_matrix/client/v3/rooms/{}/event/{}", urlencode(&room), urlencode(&edit_id));
    let edit = cs(&client, reqwest::Method::GET, url, &alice, None).await;
    assert_eq!(edit["sender"], ghost);
    assert_eq!(edit["content"]["m.new_content"]["body"], "deploy finished");
    assert_eq!(
        edit["content"]["m.relates_to"],
        json!({"rel_type": "m.replace", "event_id": original})
    );
    let deleted = client
        .post(&hook_url)
        .json(&json!({"deletes": "deploy-7", "username": "CI Bot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let url =
        format!("{hs}/_matrix/client/v3/rooms/{}/event/{}", urlencode(&room), urlencode(&original));
    let gone = cs(&client, reqwest::Method::GET, url, &alice, None).await;
    assert_eq!(gone["content"], json!({}), "redacted: {gone}");
    let posts =
        wait_for_message(&client, &hs, &room, &alice, |e| e["event_id"] == original.as_str()).await;
    assert_eq!(posts["event_id"], original.as_str());
    let url = format!("{hs}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", urlencode(&room));
    let page = cs(&client, reqwest::Method::GET, url, &alice, None).await;
    let copies = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["content"]["body"] == "deploy started")
        .count();
    assert_eq!(copies, 0, "the one post was redacted, and the repeat posted nothing");

    // A remote name of 1000 characters posts too: its ghost gets a user ID within the limit,
    // and the display name is the name cut to the homeserver's limit.
    let long_name = format!("{}{}", "Long Name ".repeat(60), "ü".repeat(400));
    assert_eq!(long_name.chars().count(), 1000);
    let res = client
        .post(&hook_url)
        .json(&json!({"text": "from a long name", "username": long_name}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let event_id = res.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned();
    let url =
        format!("{hs}/_matrix/client/v3/rooms/{}/event/{}", urlencode(&room), urlencode(&event_id));
    let ev = cs(&client, reqwest::Method::GET, url, &alice, None).await;
    let long_ghost = ev["sender"].as_str().unwrap().to_owned();
    assert!(long_ghost.starts_with("@_t__long=20_name") && long_ghost.len() <= 255, "{long_ghost}");
    assert_eq!(ev["content"]["body"], "from a long name");
    let url = format!(
        "{hs}/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        urlencode(&room),
        urlencode(&long_ghost)
    );
    let shown: String = long_name.chars().take(256).collect();
    assert_eq!(cs(&client, reqwest::Method::GET, url, &alice, None).await["displayname"], shown);

    // HTML from the hook reaches the room sanitized.
    let html =
        r#"<b onclick="alert(1)">bold</b><script>alert(2)</script><a href="javascript:x()">link"#;
    let res = client
        .post(&hook_url)
        .json(&json!({"text": "bold link", "username": "CI Bot", "html": html}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let event_id = res.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned();
    let url =
        format!("{hs}/_matrix/client/v3/rooms/{}/event/{}", urlencode(&room), urlencode(&event_id));
    let ev = cs(&client, reqwest::Method::GET, url, &alice, None).await;
    assert_eq!(ev["content"]["formatted_body"], "<b>bold</b>link", "{ev}");

    // Bad requests get a clear status and body, and post nothing.
    let bad = client
        .post(format!("{hook_url}x"))
        .json(&json!({"text": "a", "username": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 404);
    assert!(bad.text().await.unwrap().contains("unknown or revoked"));
    let bad = client
        .post(&hook_url)
        .header("content-type", "application/json")
        .body("{\"text\": 5}")
        .send()
        .await
        .unwrap();
    assert!(bad.status().is_client_error(), "{}", bad.status());
    let bad = client
        .post(&hook_url)
        .json(&json!({"text": "x".repeat(100_000), "username": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 413);
    assert!(bad.text().await.unwrap().contains("at most"));
    let image = |data: &str, content_type: &str| json!({"data_base64": data, "content_type": content_type, "filename": "x.png"});
    let refused = [
        (json!({"username": "b", "image": image("not base64!", "image/png")}), "not base64"),
        (json!({"username": "b", "image": image("", "image/png")}), "empty"),
        (json!({"username": "b", "image": image("aGk=", "text/html")}), "image type"),
        (json!({"username": "b", "image": image("aGk=", "image/")}), "image type"),
        (
            json!({"username": "b", "image": {"data_base64": "aGk=", "content_type": "image/png",
                   "filename": "../etc/passwd"}}),
            "plain file name",
        ),
        (
            json!({"username": "b", "edits": "deploy-7", "image": image("aGk=", "image/png")}),
            "cannot go with",
        ),
        (
            json!({"username": "b", "html": "<b>x</b>", "image": image("aGk=", "image/png")}),
            "caption",
        ),
    ];
    for (body, why) in refused {
        let bad = client.post(&hook_url).json(&body).send().await.unwrap();
        assert_eq!(bad.status(), 400, "{body}");
        let text = bad.text().await.unwrap();
        assert!(text.contains(why), "{body}: {text}");
    }
    let bad = client
        .post(&hook_url)
        .json(
            &json!({"username": "b", "image": {"data_base64": "aGk=", "content_type": "image/png",
               "size": 2}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422, "an unknown field is refused");
    // Over the body limit: refused before it is read whole.
    let huge = "A".repeat(6 * 1024 * 1024);
    let bad = client
        .post(&hook_url)
        .json(&json!({"username": "b", "image": image(&huge, "image/png")}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 413);
    // Under the body limit but over the image limit once decoded.
    let big = "A".repeat(4 * 1024 * 1024 / 3 * 4 + 8);
    let bad = client
        .post(&hook_url)
        .json(&json!({"username": "b", "image": image(&big, "image/png")}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 413);
    assert!(bad.text().await.unwrap().contains("the image is over"));

    // An image in a room without encryption: uploaded as it is, named by its plain `url`.
    let png: Vec<u8> = b"\x89PNG\r\n\x1a\n"
        .iter()
        .copied()
        .chain((0..12_345u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8))
        .collect();
    let res = client
        .post(&hook_url)
        .json(&json!({"username": "CI Bot", "image": {
            "data_base64": Base64::<Standard, &[u8]>::new(&png).encode(),
            "content_type": "image/png", "filename": "chart.png"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let event_id = res.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned();
    let url =
        format!("{hs}/_matrix/client/v3/rooms/{}/event/{}", urlencode(&room), urlencode(&event_id));
    let ev = cs(&client, reqwest::Method::GET, url, &alice, None).await;
    assert_eq!(ev["type"], "m.room.message", "{ev}");
    assert_eq!(ev["content"]["msgtype"], "m.image", "{ev}");
    assert_eq!(ev["content"]["body"], "chart.png", "no caption: the file name: {ev}");
    assert_eq!(ev["content"]["info"], json!({"mimetype": "image/png", "size": png.len()}));
    let mxc = ev["content"]["url"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    let stored = client
        .get(format!("{hs}/_matrix/client/v1/media/download/{mxc}"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(stored.as_ref(), png.as_slice(), "the media repository holds the image");

    // Outgoing: real users' messages, edits and redactions reach the URL, mapped to the original.
    say(&client, &hs, &room, &alice, &format!("!webhook outgoing hook1 {out_url}")).await;
    wait_for_message(&client, &hs, &room, &alice, |e| {
        e["content"]["body"].as_str().is_some_and(|b| b.contains("now go to"))
    })
    .await;
    let original = say(&client, &hs, &room, &alice, "hello outside").await;
    let edit_url =
        format!("{hs}/_matrix/client/v3/rooms/{}/send/m.room.message/edit1", urlencode(&room));
    cs(
        &client,
        reqwest::Method::PUT,
        edit_url,
        &alice,
        Some(json!({
            "msgtype": "m.text", "body": "* hello outside (edited)",
            "m.new_content": {"msgtype": "m.text", "body": "hello outside (edited)"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        })),
    )
    .await;
    let redact_url = format!(
        "{hs}/_matrix/client/v3/rooms/{}/redact/{}/r1",
        urlencode(&room),
        urlencode(&original)
    );
    cs(&client, reqwest::Method::PUT, redact_url, &alice, Some(json!({"reason": "oops"}))).await;
    // A ghost message after outgoing was set must not come back out (no loop).
    let res = client
        .post(&hook_url)
        .json(&json!({"text": "from the hook", "username": "CI Bot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        crate::common::wait_until(20, || received.lock().unwrap().len() >= 3).await,
        "{:?}",
        received.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = received.lock().unwrap().clone();
    let kinds: Vec<_> =
        got.iter().map(|v| v["event"]["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds, ["message", "edit", "redaction"], "{got:?}");
    assert_eq!(got[0]["event"]["body"], "hello outside");
    assert_eq!(got[1]["event"]["original"], original.as_str());
    assert_eq!(got[1]["event"]["body"], "hello outside (edited)");
    assert_eq!(got[2]["event"]["original"], original.as_str());

    // A file from a real user goes out with its bytes.
    let data = b"col1,col2\n1,2\n".to_vec();
    let upload = client
        .post(format!("{hs}/_matrix/media/v3/upload?filename=table.csv"))
        .bearer_auth(&alice)
        .header("content-type", "text/csv")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(upload.status().is_success());
    let mxc = upload.json::<Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned();
    let url = format!("{hs}/_matrix/client/v3/rooms/{}/send/m.room.message/f1", urlencode(&room));
    let file = json!({"msgtype": "m.file", "body": "table.csv", "url": mxc,
                      "info": {"mimetype": "text/csv", "size": data.len()}});
    cs(&client, reqwest::Method::PUT, url, &alice, Some(file)).await;
    assert!(crate::common::wait_until(20, || received.lock().unwrap().len() >= 4).await);
    let out = received.lock().unwrap()[3]["event"].clone();
    assert_eq!(out["body"], "table.csv", "{out}");
    assert_eq!(
        out["media"],
        json!({"filename": "table.csv", "content_type": "text/csv", "size": data.len(),
               "sha256": mxbridge::secret::sha256_hex(&data),
               "data_base64": "Y29sMSxjb2wyCjEsMgo="}),
        "{out}"
    );

    // The hook survives a restart of the bridge.
    bridge.stop().await;
    let bridge = start_bridge(port, &hs, &db.url, &registration).await;
    let res = client
        .post(&hook_url)
        .json(&json!({"text": "after restart", "username": "CI Bot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Deleted hooks stop working.
    say(&client, &hs, &room, &alice, "!webhook delete hook1").await;
    wait_for_message(&client, &hs, &room, &alice, |e| {
        e["content"]["body"].as_str().is_some_and(|b| b.contains("deleted"))
    })
    .await;
    let res = client
        .post(&hook_url)
        .json(&json!({"text": "gone", "username": "CI Bot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    bridge.stop().await;
}

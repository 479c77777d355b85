//! Double puppeting end to end, against a real Synapse with real clients: the webhook bridge's
//! `as-me` hooks post as their creator's own account (by a second registration's `as_token`,
//! or by a token the user gave with `login-matrix`), what a double puppet sends never comes
//! back out of the bridge, and a hook posts as nobody who did not ask for it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    common::{fresh_database, http, registration_yaml},
    synapse::{Synapse, create_room_with_bot, cs, enabled, urlencode},
    webhook::{outgoing_receiver, say, start_bridge_with, wait_for_message},
};

const BOT: &str = "@_t_bot:localhost";
const DP_TOKEN: &str = "dp_as_token_0123456789abcdef";

/// The double-puppet registration: every user of the server, not exclusive, no URL.
fn double_puppet_registration() -> String {
    format!(
        "id: test-doublepuppet\nurl: null\nas_token: {DP_TOKEN}\n\
         hs_token: dp_hs_token_0123456789abcdef\nsender_localpart: _dp_sender\n\
         namespaces:\n  users:\n    - exclusive: false\n      regex: '@.*:localhost'\n\
         rate_limited: false\n"
    )
}

/// Says a command and returns the bot's answer that contains `expect`.
async fn ask(
    client: &reqwest::Client,
    hs: &str,
    room: &str,
    token: &str,
    command: &str,
    expect: &str,
) -> String {
    say(client, hs, room, token, command).await;
    let answer = wait_for_message(client, hs, room, token, |e| {
        e["sender"] == BOT && e["content"]["body"].as_str().is_some_and(|b| b.contains(expect))
    })
    .await;
    answer["content"]["body"].as_str().unwrap().to_owned()
}

fn hook_url(answer: &str) -> String {
    answer[answer.find("http://").unwrap()..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_owned()
}

/// POSTs a message to a hook; returns the event as the room shows it.
async fn post_and_fetch(
    client: &reqwest::Client,
    hs: &str,
    room: &str,
    token: &str,
    hook: &str,
    text: &str,
) -> Value {
    let res = client.post(hook).json(&json!({"text": text, "username": "Phone"})).send().await;
    let res = res.unwrap();
    assert_eq!(res.status(), 200);
    let event_id = res.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned();
    let url =
        format!("{hs}/_matrix/client/v3/rooms/{}/event/{}", urlencode(room), urlencode(&event_id));
    cs(client, reqwest::Method::GET, url, token, None).await
}

#[tokio::test]
async fn a_double_puppet_by_as_token_speaks_as_the_user_and_is_not_bridged_back() {
    if !enabled() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let registration = registration_yaml(&format!("http://127.0.0.1:{port}"));
    let synapse = Synapse::start_with(&[&registration, &double_puppet_registration()]);
    let hs = synapse.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let extra = format!("double_puppet:\n  secrets:\n    localhost: \"as_token:{DP_TOKEN}\"\n");
    let bridge = start_bridge_with(port, &hs, &db.url, &registration, &extra).await;
    let client = http();
    let alice = synapse.register("alice");

    // What leaves the room through the outgoing hook.
    let (out_url, received) = outgoing_receiver().await;

    let room = create_room_with_bot(
        &client,
        &hs,
        &alice,
        json!({"preset": "private_chat", "invite": [BOT]}),
    )
    .await;
    let mine = hook_url(
        &ask(&client, &hs, &room, &alice, "!webhook create mine as-me", "`mine` created").await,
    );
    let plain = hook_url(
        &ask(&client, &hs, &room, &alice, "!webhook create plain", "`plain` created").await,
    );
    assert_ne!(mine, plain);
    ask(&client, &hs, &room, &alice, &format!("!webhook outgoing plain {out_url}"), "now go to")
        .await;

    // The as-me hook posts as Alice's own account, marked as the bridge's.
    let ev = post_and_fetch(&client, &hs, &room, &alice, &mine, "from my phone").await;
    assert_eq!(ev["sender"], "@alice:localhost", "{ev}");
    assert_eq!(ev["content"]["body"], "from my phone");
    assert_eq!(ev["content"]["fi.mau.double_puppet_source"], "test");
    // A hook she made without asking posts as a ghost, although the bridge could act as her.
    let ev = post_and_fetch(&client, &hs, &room, &alice, &plain, "not as alice").await;
    let ghost = ev["sender"].as_str().unwrap();
    assert!(ghost.starts_with("@_t_") && ghost != "@alice:localhost", "{ev}");

    // Alice types a message herself: it goes out. Her puppet's message, earlier in the same
    // room (handled in order), did not.
    say(&client, &hs, &room, &alice, "typed by alice").await;
    let mut out = Vec::new();
    for _ in 0..100 {
        out = received.lock().unwrap().clone();
        if out.iter().any(|v| v["event"]["body"] == "typed by alice") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bodies: Vec<&str> = out.iter().filter_map(|v| v["event"]["body"].as_str()).collect();
    assert!(bodies.contains(&"typed by alice"), "{bodies:?}");
    assert!(!bodies.contains(&"from my phone"), "the puppet's echo went out: {bodies:?}");
    bridge.stop().await;
}

#[tokio::test]
async fn a_double_puppet_by_a_given_token_speaks_as_the_user_until_revoked() {
    if !enabled() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let registration = registration_yaml(&format!("http://127.0.0.1:{port}"));
    let synapse = Synapse::start(&registration);
    let hs = synapse.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let bridge = start_bridge_with(port, &hs, &db.url, &registration, "").await;
    let client = http();
    let carol = synapse.register("carol");
    let dave = synapse.register("dave");

    // Carol's management room: a DM with the bot.
    let dm = create_room_with_bot(
        &client,
        &hs,
        &carol,
        json!({"preset": "trusted_private_chat", "invite": [BOT], "is_direct": true}),
    )
    .await;
    // Someone else's token is refused, and the message carrying it is redacted.
    let command = format!("login-matrix {dave}");
    let asked = say(&client, &hs, &dm, &carol, &command).await;
    let answer = wait_for_message(&client, &hs, &dm, &carol, |e| {
        e["sender"] == BOT
            && e["content"]["body"].as_str().is_some_and(|b| b.contains("belongs to @dave"))
    })
    .await;
    assert!(answer["content"]["body"].as_str().unwrap().contains("not stored"));
    let url =
        format!("{hs}/_matrix/client/v3/rooms/{}/event/{}", urlencode(&dm), urlencode(&asked));
    let mut redacted = false;
    for _ in 0..50 {
        if cs(&client, reqwest::Method::GET, url.clone(), &carol, None).await["content"]
            == json!({})
        {
            redacted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(redacted, "the token was left readable in the room");
    ask(&client, &hs, &dm, &carol, &format!("login-matrix {carol}"), "your Matrix account").await;

    // Her as-me hook now posts as her account.
    let room = create_room_with_bot(
        &client,
        &hs,
        &carol,
        json!({"preset": "private_chat", "invite": [BOT]}),
    )
    .await;
    let mine = hook_url(
        &ask(&client, &hs, &room, &carol, "!webhook create mine as-me", "`mine` created").await,
    );
    let ev = post_and_fetch(&client, &hs, &room, &carol, &mine, "given token").await;
    assert_eq!(ev["sender"], "@carol:localhost", "{ev}");
    assert_eq!(ev["content"]["fi.mau.double_puppet_source"], "test");

    // Revoked: the ghost posts again.
    ask(&client, &hs, &dm, &carol, "logout-matrix", "forgotten").await;
    let ev = post_and_fetch(&client, &hs, &room, &carol, &mine, "after logout").await;
    assert_ne!(ev["sender"], "@carol:localhost", "{ev}");
    assert!(ev["content"].get("fi.mau.double_puppet_source").is_none(), "{ev}");

    // A token revoked behind the bridge's back: the post still arrives (from the ghost), the
    // token is forgotten, and Carol is told.
    let url = format!("{hs}/_matrix/client/v3/login");
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user",
        "user": "carol"}, "password": "correct-horse-battery"});
    let second = client.post(url).json(&login).send().await.unwrap().json::<Value>().await.unwrap();
    let second = second["access_token"].as_str().unwrap().to_owned();
    say(&client, &hs, &dm, &carol, &format!("login-matrix {second}")).await;
    let url = format!("{hs}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", urlencode(&dm));
    let mut taken = false;
    for _ in 0..100 {
        let page = cs(&client, reqwest::Method::GET, url.clone(), &carol, None).await;
        let done = page["chunk"].as_array().unwrap().iter().filter(|e| {
            e["sender"] == BOT
                && e["content"]["body"].as_str().is_some_and(|b| b.contains("your Matrix account"))
        });
        if done.count() == 2 {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken, "the second token was not taken");
    let url = format!("{hs}/_matrix/client/v3/logout");
    cs(&client, reqwest::Method::POST, url, &second, Some(json!({}))).await;
    let ev = post_and_fetch(&client, &hs, &room, &carol, &mine, "after revoking").await;
    assert_ne!(ev["sender"], "@carol:localhost", "{ev}");
    wait_for_message(&client, &hs, &dm, &carol, |e| {
        e["sender"] == BOT
            && e["content"]["body"].as_str().is_some_and(|b| b.contains("no longer accepts"))
    })
    .await;
    bridge.stop().await;
}

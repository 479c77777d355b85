//! Double puppets against a mock homeserver: who may be puppeted, how requests are
//! authenticated, the mark on everything they send, and echo suppression by that mark.

use ruma::{RoomId, UserId, event_id, room_id, user_id};
use serde_json::{Value, json};

use super::is_our_echo;
use crate::{
    Context, Secret,
    event::Event,
    intent::DOUBLE_PUPPET_SOURCE,
    login::{LoginState, NewLogin},
    remote::{RemoteLoginId, RemoteSender},
    store::{MemberRow, Membership},
    testing::{MockHomeserver, test_context},
};

async fn context(hs: &MockHomeserver, extra: &str) -> Context {
    test_context(hs, extra).await
}

fn with_secret() -> &'static str {
    "double_puppet:\n  secrets:\n    localhost: \"as_token:dp_token_123\"\n\
     permissions:\n  localhost: user\n  '@relayed:localhost': relay\n"
}

/// The user is in the room already, as far as the cache knows.
async fn joined(ctx: &Context, room: &RoomId, user: &UserId) {
    ctx.store().set_membership(MemberRow::new(room, user, Membership::Join)).await.unwrap();
    ctx.store().set_members_fetched(room, true).await.unwrap();
}

fn body(request: &wiremock::Request) -> Value {
    serde_json::from_slice(&request.body).unwrap()
}

fn query(request: &wiremock::Request, key: &str) -> Option<String> {
    request.url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

fn bearer(request: &wiremock::Request) -> String {
    request.headers.get("authorization").unwrap().to_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_as_token_puppet_asserts_the_user_and_marks_what_it_sends() {
    let hs = MockHomeserver::start().await;
    let ctx = context(&hs, with_secret()).await;
    let room = room_id!("!portal:localhost");
    let alice = user_id!("@alice:localhost");
    joined(&ctx, room, alice).await;
    let token = "dp_token_123";
    let send = hs.mock_send(room, "m.room.message").with_token(token);
    send.ok_body(json!({"event_id": "$m"})).mount().await;
    hs.mock_redact(room).with_token(token).ok_body(json!({"event_id": "$r"})).mount().await;
    let state = hs.mock_set_state(room, "m.room.topic", "").with_token(token);
    state.ok_body(json!({"event_id": "$t"})).mount().await;

    let puppet = ctx.double_puppet(alice).await.unwrap().expect("alice is puppeted");
    assert!(puppet.is_double_puppet() && puppet.is_real_user());
    puppet.send_text(room, "from my phone").await.unwrap();
    puppet.redact(room, event_id!("$old")).reason("deleted").await.unwrap();
    let topic = ruma::events::room::topic::RoomTopicEventContent::new("t".into());
    puppet.send_state(room, &ruma::events::EmptyStateKey, &topic).await.unwrap();

    let received = hs.received().await;
    assert_eq!(received.len(), 3, "no join, no registration: {received:?}");
    for request in &received {
        assert_eq!(bearer(request), "Bearer dp_token_123");
        assert_eq!(query(request, "user_id").as_deref(), Some(alice.as_str()));
        assert_eq!(body(request)[DOUBLE_PUPPET_SOURCE], "test-bridge", "{}", request.url);
    }
    assert_eq!(body(&received[0])["body"], "from my phone");
    assert_eq!(body(&received[1])["reason"], "deleted");
    assert_eq!(body(&received[2])["topic"], "t");
}

#[tokio::test]
async fn a_token_given_by_the_user_wins_and_asserts_nobody() {
    let hs = MockHomeserver::start().await;
    let ctx = context(&hs, with_secret()).await;
    let room = room_id!("!portal:localhost");
    let alice = user_id!("@alice:localhost");
    joined(&ctx, room, alice).await;
    for token in ["syt_alice", "dp_token_123"] {
        let send = hs.mock_send(room, "m.room.message").with_token(token);
        send.ok_body(json!({"event_id": "$m"})).mount().await;
    }
    ctx.store().set_double_puppet_token(alice, Some(&Secret::new("syt_alice"))).await.unwrap();

    let puppet = ctx.double_puppet(alice).await.unwrap().unwrap();
    puppet.send_text(room, "hi").await.unwrap();
    let received = hs.received().await;
    assert_eq!(bearer(&received[0]), "Bearer syt_alice");
    assert_eq!(query(&received[0], "user_id"), None);
    assert_eq!(body(&received[0])[DOUBLE_PUPPET_SOURCE], "test-bridge");

    // Forgotten: the as_token method serves again.
    ctx.store().set_double_puppet_token(alice, None).await.unwrap();
    let puppet = ctx.double_puppet(alice).await.unwrap().unwrap();
    puppet.send_text(room, "again").await.unwrap();
    let received = hs.received().await;
    assert_eq!(bearer(&received[1]), "Bearer dp_token_123");
}

#[tokio::test]
async fn only_permitted_real_users_of_known_servers_are_puppeted() {
    let hs = MockHomeserver::start().await;
    let ctx = context(&hs, with_secret()).await;
    // Below `user`, our own ghosts and bot, users of servers without a secret or URL.
    for user in [
        user_id!("@relayed:localhost"),
        user_id!("@_test_ghost:localhost"),
        user_id!("@_test_bot:localhost"),
        user_id!("@carol:elsewhere.org"),
    ] {
        assert!(ctx.double_puppet(user).await.unwrap().is_none(), "{user}");
    }
    // Without a secret, only a token the user gave counts.
    let ctx = context(&hs, "permissions:\n  localhost: user\n").await;
    let alice = user_id!("@alice:localhost");
    assert!(ctx.double_puppet(alice).await.unwrap().is_none());
    ctx.store().set_double_puppet_token(alice, Some(&Secret::new("syt_a"))).await.unwrap();
    assert!(ctx.double_puppet(alice).await.unwrap().is_some());
    // An operator who forbids given tokens: the stored one is not used.
    let ctx = context(&hs, "double_puppet: {allow_manual: false}\n").await;
    ctx.store().set_double_puppet_token(alice, Some(&Secret::new("syt_a"))).await.unwrap();
    assert!(ctx.double_puppet(alice).await.unwrap().is_none());
}

#[tokio::test]
async fn a_remote_sender_speaks_as_a_user_only_through_that_users_login() {
    let hs = MockHomeserver::start().await;
    let ctx = context(&hs, with_secret()).await;
    let alice = user_id!("@alice:localhost");
    let login = NewLogin {
        id: RemoteLoginId::from("alice-remote"),
        remote_name: "alice".into(),
        metadata: Value::Null,
    };
    ctx.store().add_login(alice, &login, LoginState::Connected, 1).await.unwrap();

    let own = RemoteSender::named("alice-remote", "Alice").from_login(login.id.clone());
    assert_eq!(ctx.sender_intent(&own).await.unwrap().user_id(), alice);
    // No login named: the ghost, whoever the remote ID looks like.
    let plain = RemoteSender::named("alice-remote", "Alice");
    hs.mock_register().ok_body(json!({"user_id": "@_test_alice-remote:localhost"})).mount().await;
    hs.mock_prefix("PUT", "/_matrix/client/v3/profile/").ok_body(json!({})).mount().await;
    let ghost = ctx.sender_intent(&plain).await.unwrap();
    assert!(!ghost.is_real_user(), "{}", ghost.user_id());
    // A login the bridge does not have: the ghost too.
    let forged = RemoteSender::named("alice-remote", "Alice").from_login("nobody".into());
    assert!(!ctx.sender_intent(&forged).await.unwrap().is_real_user());
}

fn event(content: Value) -> Event {
    let json = json!({
        "event_id": "$e", "room_id": "!r:localhost", "sender": "@alice:localhost",
        "type": "m.room.message", "origin_server_ts": 1, "content": content,
    });
    Event::from_json(&json.to_string()).unwrap()
}

#[tokio::test]
async fn echoes_are_known_by_our_mark_only() {
    let hs = MockHomeserver::start().await;
    let ctx = context(&hs, "").await;
    let ours = json!({"msgtype": "m.text", "body": "x", DOUBLE_PUPPET_SOURCE: "test-bridge"});
    assert!(is_our_echo(&ctx, &event(ours)));
    // Another bridge's double puppet, or none: the event is new to this bridge.
    let theirs = json!({"msgtype": "m.text", "body": "x", DOUBLE_PUPPET_SOURCE: "other-bridge"});
    assert!(!is_our_echo(&ctx, &event(theirs)));
    let quoted = json!({"msgtype": "m.text", "body": "fi.mau.double_puppet_source test-bridge"});
    assert!(!is_our_echo(&ctx, &event(quoted)));
}

/// A token sent where others can read it is not taken, and the message carrying it is
/// redacted all the same, so it does not stay in the room's history.
#[tokio::test]
async fn a_token_sent_in_a_shared_room_is_redacted_and_not_stored() {
    let hs = MockHomeserver::start().await;
    let ctx =
        context(&hs, "double_puppet: {allow_manual: true}\npermissions: {localhost: user}\n").await;
    let room = room_id!("!shared:localhost");
    let alice = user_id!("@alice:localhost");
    for user in [ctx.bot_user_id(), alice, user_id!("@bob:localhost")] {
        joined(&ctx, room, user).await;
    }
    hs.mock_redact(room).as_bot().ok_body(json!({"event_id": "$r"})).expect(1).mount().await;
    let event = Event::from_json(
        &json!({"event_id": "$t", "room_id": room, "sender": alice, "type": "m.room.message",
                "content": {"msgtype": "m.text", "body": "login-matrix secret_token"}})
        .to_string(),
    )
    .unwrap();
    let call = crate::CommandCall {
        event,
        name: "login-matrix".into(),
        args: vec!["secret_token".into()],
        level: crate::config::PermissionLevel::User,
        portal: None,
    };
    let answer = super::run(&ctx, &call).await.unwrap().unwrap();
    assert!(answer.contains("private chat"), "{answer}");
    assert!(!answer.contains("secret_token"), "{answer}");
    let row = ctx.store().user(alice).await.unwrap();
    assert!(row.and_then(|r| r.double_puppet_token).is_none());
}

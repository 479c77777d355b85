//! Login flows against the scripted network: driven through the context's API (as the
//! provisioning API does) and through the bot's commands, reaching the same state.

use std::time::Duration;

use ruma::{room_id, user_id};
use serde_json::json;

use super::{
    LoginError, LoginState, LoginStatus, LoginStep, LoginValues,
    fake::{PASSWORD, setup},
};
use crate::{event::Event, testing::MockHomeserver};

fn values(pairs: &[(&str, &str)]) -> LoginValues {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Polls (bounded) until the login has the state.
async fn wait_state(ctx: &crate::Context, id: &str, state: LoginState) {
    for _ in 0..1000 {
        if ctx.store().login(&id.into()).await.unwrap().is_some_and(|l| l.state == state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("login {id} never reached {state}: {:?}", ctx.store().login(&id.into()).await);
}

#[tokio::test]
async fn a_password_flow_checks_fields_then_stores_and_connects_the_login() {
    let hs = MockHomeserver::start().await;
    let (ctx, net) = setup(&hs, "").await;
    let alice = user_id!("@alice:localhost");
    assert!(matches!(ctx.start_login(alice, "nope").await, Err(LoginError::UnknownFlow(_))));
    let p = ctx.start_login(alice, "password").await.unwrap();
    let LoginStatus::Step(LoginStep::Fields { step_id, fields, .. }) = &p.status else {
        panic!("{p:?}")
    };
    assert_eq!(fields.len(), 2);
    // Bad values leave the step as it is.
    for bad in [
        values(&[("username", "alice")]),
        values(&[("username", "Alice!"), ("password", "x")]),
        values(&[("username", "alice"), ("password", "x"), ("extra", "y")]),
    ] {
        let e = ctx.submit_login(alice, &p.process_id, step_id, bad).await.unwrap_err();
        assert!(matches!(e, LoginError::BadInput(_)), "{e:?}");
    }
    let e = ctx.submit_login(alice, &p.process_id, "other", values(&[])).await.unwrap_err();
    assert!(matches!(e, LoginError::BadInput(_)), "{e:?}");
    // Another user cannot touch the process.
    let bob = user_id!("@bob:localhost");
    assert!(matches!(ctx.login_progress(bob, &p.process_id), Err(LoginError::NotFound(_))));
    let done = ctx
        .submit_login(
            alice,
            &p.process_id,
            step_id,
            values(&[("username", "alice"), ("password", PASSWORD)]),
        )
        .await
        .unwrap();
    let LoginStatus::Done(login) = done.status else { panic!("{done:?}") };
    assert_eq!((login.id.as_str(), login.remote_name.as_str()), ("alice", "alice on FakeNet"));
    assert_eq!(login.metadata, json!({"user": "alice"}));
    wait_state(&ctx, "alice", LoginState::Connected).await;
    assert_eq!(*net.connected.lock().unwrap(), ["alice"]);

    // A wrong password ends the login; nothing is stored.
    let p = ctx.start_login(alice, "password").await.unwrap();
    let failed = ctx
        .submit_login(
            alice,
            &p.process_id,
            "credentials",
            values(&[("username", "eve"), ("password", "x")]),
        )
        .await
        .unwrap();
    assert_eq!(failed.status, LoginStatus::Failed("wrong password".into()));
    assert!(ctx.store().login(&"eve".into()).await.unwrap().is_none());
    assert!(ctx.logins_in_progress(alice).is_empty());
}

#[tokio::test]
async fn the_most_logins_per_user_is_enforced() {
    let hs = MockHomeserver::start().await;
    let (ctx, _net) = setup(&hs, "logins: {max_per_user: 1}\n").await;
    let alice = user_id!("@alice:localhost");
    let login = |name: &'static str| {
        let ctx = ctx.clone();
        async move {
            let p = ctx.start_login(alice, "password").await.unwrap();
            let v = values(&[("username", name), ("password", PASSWORD)]);
            ctx.submit_login(alice, &p.process_id, "credentials", v).await.unwrap().status
        }
    };
    assert!(matches!(login("one").await, LoginStatus::Done(_)));
    // The same account again replaces its login; another one is refused.
    assert!(matches!(login("one").await, LoginStatus::Done(_)));
    let LoginStatus::Failed(why) = login("two").await else { panic!() };
    assert!(why.contains("log out of one first"), "{why}");
    assert_eq!(ctx.store().logins_of(alice).await.unwrap().len(), 1);
    // After a logout there is room again.
    ctx.logout(alice, &"one".into()).await.unwrap();
    assert!(matches!(login("two").await, LoginStatus::Done(_)));
}

#[tokio::test]
async fn a_display_and_wait_step_long_polls_until_the_network_confirms() {
    let hs = MockHomeserver::start().await;
    let (ctx, net) = setup(&hs, "").await;
    let alice = user_id!("@alice:localhost");
    let p = ctx.start_login(alice, "qr").await.unwrap();
    let LoginStatus::Step(LoginStep::DisplayAndWait { step_id, .. }) = &p.status else {
        panic!("{p:?}")
    };
    // Nothing happened: the poll returns the same step when its time is up.
    let same =
        ctx.wait_login(alice, &p.process_id, step_id, Duration::from_millis(50)).await.unwrap();
    assert_eq!((same.seq, &same.status), (p.seq, &p.status));
    let poll = {
        let (ctx, id, step) = (ctx.clone(), p.process_id.clone(), step_id.clone());
        tokio::spawn(
            async move { ctx.wait_login(alice, &id, &step, Duration::from_secs(10)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    net.scanned.notify_one();
    let done = poll.await.unwrap().unwrap();
    assert!(matches!(&done.status, LoginStatus::Done(l) if l.id.as_str() == "qr-user"), "{done:?}");
}

#[tokio::test]
async fn a_cookies_step_takes_the_named_cookies() {
    let hs = MockHomeserver::start().await;
    let (ctx, _net) = setup(&hs, "").await;
    let alice = user_id!("@alice:localhost");
    let p = ctx.start_login(alice, "cookies").await.unwrap();
    assert_eq!(
        p.status.clone(),
        LoginStatus::Step(LoginStep::cookies(
            "cookies",
            "Log in on the web site.",
            "https://fakenet.invalid/login",
            vec!["session".into()]
        ))
    );
    let e = ctx.submit_login(alice, &p.process_id, "cookies", values(&[])).await.unwrap_err();
    assert!(matches!(e, LoginError::BadInput(_)));
    let done =
        ctx.submit_login(alice, &p.process_id, "cookies", values(&[("session", "ok")])).await;
    assert!(matches!(done.unwrap().status, LoginStatus::Done(_)));
    // Cancelling ends a login in progress; a user has at most three at once.
    let p = ctx.start_login(alice, "cookies").await.unwrap();
    ctx.cancel_login(alice, &p.process_id).await.unwrap();
    assert!(ctx.login_progress(alice, &p.process_id).is_err());
    for _ in 0..3 {
        ctx.start_login(alice, "cookies").await.unwrap();
    }
    let e = ctx.start_login(alice, "cookies").await.unwrap_err();
    assert!(matches!(e, LoginError::Forbidden(_)), "{e:?}");
}

#[tokio::test]
async fn a_refused_reconnect_is_bad_credentials_and_the_user_is_told() {
    let hs = MockHomeserver::start().await;
    let (ctx, net) = setup(&hs, "").await;
    let alice = user_id!("@alice:localhost");
    let dm = room_id!("!dm:localhost");
    ctx.store().set_management_room(alice, Some(dm)).await.unwrap();
    hs.mock_send(dm, "m.room.message").as_bot().ok().expect(1).mount().await;
    for (id, state) in [("good", LoginState::Connected), ("bad-1", LoginState::Connected)] {
        let new = super::NewLogin { id: id.into(), remote_name: id.into(), metadata: json!(null) };
        ctx.store().add_login(alice, &new, state, 5).await.unwrap();
    }
    ctx.connect_stored_logins();
    wait_state(&ctx, "bad-1", LoginState::BadCredentials).await;
    wait_state(&ctx, "good", LoginState::Connected).await;
    let bad = ctx.store().login(&"bad-1".into()).await.unwrap().unwrap();
    assert_eq!(bad.state_reason.as_deref(), Some("password changed"));
    assert_eq!(*net.connected.lock().unwrap(), ["good"]);
    let notice = wait_for_body(&hs, "m.room.message").await;
    assert!(notice["body"].as_str().unwrap().contains("refused your login"), "{notice}");
}

#[tokio::test]
async fn logins_of_users_no_longer_allowed_are_not_connected_at_start() {
    let hs = MockHomeserver::start().await;
    let (ctx, net) = setup(&hs, "").await;
    for (id, user) in
        [("good", user_id!("@alice:localhost")), ("gone", user_id!("@mallory:other.org"))]
    {
        let new = super::NewLogin { id: id.into(), remote_name: id.into(), metadata: json!(null) };
        ctx.store().add_login(user, &new, LoginState::Connected, 5).await.unwrap();
    }
    ctx.connect_stored_logins();
    wait_state(&ctx, "good", LoginState::Connected).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*net.connected.lock().unwrap(), ["good"], "mallory's login was connected");
}

/// The first request body whose path contains `part` (bounded wait).
pub(crate) async fn wait_for_body(hs: &MockHomeserver, part: &str) -> serde_json::Value {
    bodies(hs, part, 1).await.remove(0)
}

/// The bodies of `n` requests whose path contains `part` (bounded wait).
pub(crate) async fn bodies(hs: &MockHomeserver, part: &str, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..1000 {
        let found: Vec<serde_json::Value> = hs
            .received()
            .await
            .into_iter()
            .filter(|r| r.url.path().contains(part))
            .map(|r| serde_json::from_slice(&r.body).unwrap_or_default())
            .collect();
        if found.len() >= n {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} requests to {part}");
}

fn dm_message(id: &str, body: &str) -> Event {
    Event::from_json(
        &json!({"event_id": id, "room_id": "!dm:localhost", "sender": "@alice:localhost",
                "type": "m.room.message", "content": {"msgtype": "m.text", "body": body}})
        .to_string(),
    )
    .unwrap()
}

/// `login` in a DM with the bot asks for each field in turn (redacting the password), stores
/// the login, and `list-logins` and `logout` see it: the same state as over the API.
#[tokio::test]
async fn a_login_through_commands_asks_field_by_field() {
    let hs = MockHomeserver::start().await;
    let (ctx, net) = setup(&hs, "").await;
    let dm = room_id!("!dm:localhost");
    hs.mock_send(dm, "m.room.message").as_bot().ok().mount().await;
    hs.mock_redact(dm).as_bot().ok_body(json!({"event_id": "$red"})).expect(1).mount().await;
    let fake = crate::accounts::fake::FakeNet::default();
    let say = |id: &'static str, body: &'static str| {
        let (ctx, fake) = (ctx.clone(), &fake);
        async move { crate::route::route(&ctx, fake, &dm_message(id, body)).await.unwrap() }
    };
    say("$1", "login").await;
    say("$2", "login password").await;
    say("$3", "alice").await;
    say("$4", PASSWORD).await;
    let sent = bodies(&hs, "m.room.message", 4).await;
    let texts: Vec<&str> = sent.iter().map(|b| b["body"].as_str().unwrap()).collect();
    assert!(texts[0].contains("login FLOW") && texts[0].contains("qr"), "{texts:?}");
    assert!(texts[1].contains("Username"), "{texts:?}");
    assert!(texts[2].contains("Password"), "{texts:?}");
    assert!(texts[3].contains("Logged in as"), "{texts:?}");
    wait_state(&ctx, "alice", LoginState::Connected).await;
    assert_eq!(*net.connected.lock().unwrap(), ["alice"]);
    let alice = user_id!("@alice:localhost");
    assert_eq!(
        ctx.store().user(alice).await.unwrap().unwrap().management_room.as_deref(),
        Some(dm)
    );
    say("$5", "list-logins").await;
    say("$6", "logout alice").await;
    let sent = bodies(&hs, "m.room.message", 6).await;
    assert!(sent[4]["body"].as_str().unwrap().contains("CONNECTED"), "{}", sent[4]);
    assert!(sent[5]["body"].as_str().unwrap().contains("Logged out"), "{}", sent[5]);
    assert!(ctx.store().logins_of(alice).await.unwrap().is_empty());
    assert_eq!(*net.logged_out.lock().unwrap(), ["alice"]);
}

/// A QR login through commands: the code is shown as text, and the bot posts the outcome
/// once the network confirms; `cancel` ends a login waiting for a field.
#[tokio::test]
async fn a_display_step_through_commands_posts_the_outcome_later() {
    let hs = MockHomeserver::start().await;
    let (ctx, net) = setup(&hs, "").await;
    let dm = room_id!("!dm:localhost");
    hs.mock_send(dm, "m.room.message").as_bot().ok().mount().await;
    let fake = crate::accounts::fake::FakeNet::default();
    crate::route::route(&ctx, &fake, &dm_message("$1", "login qr")).await.unwrap();
    let shown = wait_for_body(&hs, "m.room.message").await;
    assert!(shown["body"].as_str().unwrap().contains("fakenet://link/42"), "{shown}");
    net.scanned.notify_one();
    let sent = bodies(&hs, "m.room.message", 2).await;
    assert!(sent[1]["body"].as_str().unwrap().contains("QR User"), "{}", sent[1]);
    crate::route::route(&ctx, &fake, &dm_message("$2", "login password")).await.unwrap();
    crate::route::route(&ctx, &fake, &dm_message("$3", "cancel")).await.unwrap();
    let sent = bodies(&hs, "m.room.message", 4).await;
    assert!(sent[3]["body"].as_str().unwrap().contains("cancelled"), "{}", sent[3]);
    assert!(ctx.logins_in_progress(user_id!("@alice:localhost")).is_empty());
}

fn portal_message(id: &str, sender: &str, body: &str) -> Event {
    Event::from_json(
        &json!({"event_id": id, "room_id": "!p:localhost", "sender": sender,
                "type": "m.room.message", "content": {"msgtype": "m.text", "body": body}})
        .to_string(),
    )
    .unwrap()
}

/// A message goes out through the sender's own login in the portal; a relay-level user
/// without one goes through the portal's relay (set with `set-relay`), formatted by the
/// template and mapped like any other; anyone else is told the message was not bridged.
#[tokio::test]
async fn messages_go_through_the_senders_login_else_the_relay_else_nowhere() {
    use crate::{remote::PortalKey, store::Membership};
    let hs = MockHomeserver::start().await;
    let (ctx, net) = setup(&hs, "relay: {enabled: true, admin_only: false}\n").await;
    let room = room_id!("!p:localhost");
    let key = PortalKey::shared("c");
    ctx.store()
        .upsert_portal(&crate::store::PortalRow {
            key: key.clone(),
            room_id: Some(room.to_owned()),
            name: None,
            topic: None,
            avatar_url: None,
            metadata: None,
        })
        .await
        .unwrap();
    let store = ctx.store();
    for (user, name) in
        [(user_id!("@_test_bot:localhost"), None), (user_id!("@bob:other.org"), Some("Bob"))]
    {
        let row = crate::store::MemberRow {
            displayname: name,
            ..crate::store::MemberRow::new(room, user, Membership::Join)
        };
        store.set_membership(row).await.unwrap();
    }
    store.set_members_fetched(room, true).await.unwrap();
    let alice = user_id!("@alice:localhost");
    let new =
        super::NewLogin { id: "a1".into(), remote_name: "Alice".into(), metadata: json!(null) };
    store.add_login(alice, &new, LoginState::Connected, 5).await.unwrap();
    store.add_login_to_portal(&"a1".into(), &key).await.unwrap();
    hs.mock_send(room, "m.room.message").as_bot().ok().mount().await;
    hs.mock_send(room, "com.beeper.message_send_status").as_bot().ok().mount().await;

    let route = |event: Event| {
        let ctx = ctx.clone();
        let net = net.clone();
        async move { crate::route::route(&ctx, &*net, &event).await.unwrap() }
    };
    let own = route(portal_message("$1", "@alice:localhost", "hi")).await;
    assert_eq!(own.messages.len(), 1);
    // No relay yet: bob is told.
    assert!(route(portal_message("$2", "@bob:other.org", "hello")).await.is_empty());
    let status = wait_for_body(&hs, "com.beeper.message_send_status").await;
    assert_eq!(
        (status["reason"].as_str(), status["m.relates_to"]["event_id"].as_str()),
        (Some("m_no_permission"), Some("$2"))
    );
    route(portal_message("$3", "@alice:localhost", "!fake set-relay")).await;
    let relayed = route(portal_message("$4", "@bob:other.org", "hello")).await;
    assert_eq!(relayed.messages.len(), 1, "a relayed message is mapped");
    assert_eq!(relayed.messages[0].event_id, "$4");
    // Users without a level are never relayed.
    assert!(route(portal_message("$5", "@eve:elsewhere.org", "psst")).await.is_empty());
    let statuses = bodies(&hs, "com.beeper.message_send_status", 2).await;
    assert_eq!(statuses[1]["m.relates_to"]["event_id"], "$5");
    assert_eq!(*net.sent.lock().unwrap(), ["a1: hi", "a1: Bob: hello"]);
    assert_eq!(ctx.store().portal_relay(&key).await.unwrap().unwrap().id.as_str(), "a1");
    route(portal_message("$6", "@alice:localhost", "!fake unset-relay")).await;
    assert_eq!(ctx.store().portal_relay(&key).await.unwrap(), None);
}

/// A user whose permission was taken away after logging in (their login is still stored)
/// sends nothing through it, and is told.
#[tokio::test]
async fn a_login_of_a_user_no_longer_allowed_sends_nothing() {
    use crate::{remote::PortalKey, store::Membership};
    let hs = MockHomeserver::start().await;
    let (ctx, net) = setup(&hs, "").await;
    let room = room_id!("!p:localhost");
    let key = PortalKey::shared("c");
    let store = ctx.store();
    store
        .upsert_portal(&crate::store::PortalRow {
            key: key.clone(),
            room_id: Some(room.to_owned()),
            name: None,
            topic: None,
            avatar_url: None,
            metadata: None,
        })
        .await
        .unwrap();
    let bot = user_id!("@_test_bot:localhost");
    store.set_membership(crate::store::MemberRow::new(room, bot, Membership::Join)).await.unwrap();
    store.set_members_fetched(room, true).await.unwrap();
    let eve = user_id!("@eve:elsewhere.org");
    let new = super::NewLogin { id: "e1".into(), remote_name: "Eve".into(), metadata: json!(null) };
    store.add_login(eve, &new, LoginState::Connected, 5).await.unwrap();
    store.add_login_to_portal(&"e1".into(), &key).await.unwrap();
    hs.mock_send(room, "com.beeper.message_send_status").as_bot().ok().mount().await;

    let done = crate::route::route(&ctx, &*net, &portal_message("$1", eve.as_str(), "hi")).await;
    assert!(done.unwrap().is_empty());
    assert!(net.sent.lock().unwrap().is_empty(), "{:?}", net.sent.lock().unwrap());
    let status = wait_for_body(&hs, "com.beeper.message_send_status").await;
    assert_eq!(
        (status["reason"].as_str(), status["m.relates_to"]["event_id"].as_str()),
        (Some("m_no_permission"), Some("$1"))
    );
}

/// Every state change of a login is POSTed to the status endpoint in the
/// `com.beeper.bridge_state` shape, with the as_token.
#[tokio::test]
async fn state_changes_are_pushed_to_the_status_endpoint() {
    use std::sync::{Arc, Mutex};
    let got: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let sink = {
        let got = got.clone();
        axum::Router::new().route(
            "/state",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::Json<serde_json::Value>| {
                    let got = got.clone();
                    async move {
                        let auth = headers["authorization"].to_str().unwrap().to_owned();
                        got.lock().unwrap().push((auth, body.0));
                        "{}"
                    }
                },
            ),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, sink).await });
    let hs = MockHomeserver::start().await;
    let extra = format!("logins: {{status_endpoint: 'http://{addr}/state'}}\n");
    let (ctx, _net) = setup(&hs, &extra).await;
    let alice = user_id!("@alice:localhost");
    let p = ctx.start_login(alice, "password").await.unwrap();
    let v = values(&[("username", "alice"), ("password", PASSWORD)]);
    ctx.submit_login(alice, &p.process_id, "credentials", v).await.unwrap();
    wait_state(&ctx, "alice", LoginState::Connected).await;
    ctx.set_login_state(&"alice".into(), LoginState::TransientDisconnect, Some("socket closed"))
        .await;
    ctx.logout(alice, &"alice".into()).await.unwrap();
    let pushed = got.lock().unwrap().clone();
    let states: Vec<&str> =
        pushed.iter().map(|(_, b)| b["state_event"].as_str().unwrap()).collect();
    assert_eq!(states, ["CONNECTING", "CONNECTED", "TRANSIENT_DISCONNECT", "LOGGED_OUT"]);
    for (auth, body) in &pushed {
        assert_eq!(auth, &format!("Bearer {}", crate::testing::AS_TOKEN));
        assert_eq!(
            (body["remote_id"].as_str(), body["user_id"].as_str()),
            (Some("alice"), Some("@alice:localhost"))
        );
        assert_eq!(body["source"], "bridge");
        assert!(body["timestamp"].as_u64().unwrap() > 1_600_000_000);
    }
    assert_eq!(pushed[2].1["message"], "socket closed");
    assert_eq!(pushed[2].1["error"], "transient_disconnect");
    let text = ctx.metrics().render(ctx.store()).await;
    assert!(text.contains("mxbridge_login_state_changes_total{state=\"CONNECTED\"} 1"), "{text}");
}

/// Passwords are never asked for in a room others can read: `login` works only in a DM with
/// the bot.
#[tokio::test]
async fn login_is_refused_outside_a_dm_with_the_bot() {
    let hs = MockHomeserver::start().await;
    let (ctx, _net) = setup(&hs, "").await;
    let room = room_id!("!group:localhost");
    for user in ["@_test_bot:localhost", "@alice:localhost", "@bob:localhost"] {
        let user: ruma::OwnedUserId = user.try_into().unwrap();
        let joined = crate::store::Membership::Join;
        let row = crate::store::MemberRow::new(room, &user, joined);
        ctx.store().set_membership(row).await.unwrap();
    }
    ctx.store().set_members_fetched(room, true).await.unwrap();
    hs.mock_send(room, "m.room.message").as_bot().ok().expect(1).mount().await;
    let event = Event::from_json(
        &json!({"event_id": "$g", "room_id": room, "sender": "@alice:localhost",
                "type": "m.room.message", "content": {"msgtype": "m.text", "body": "!fake login password"}})
        .to_string(),
    )
    .unwrap();
    let fake = crate::accounts::fake::FakeNet::default();
    crate::route::route(&ctx, &fake, &event).await.unwrap();
    let reply = wait_for_body(&hs, "m.room.message").await;
    assert!(reply["body"].as_str().unwrap().contains("private chat"), "{reply}");
    assert!(ctx.logins_in_progress(user_id!("@alice:localhost")).is_empty());
}

/// Two answers to one step at once: one is taken, the other dropped (never taken as the
/// answer to a later step, never cancelling the login).
#[tokio::test]
async fn concurrent_answers_to_one_step_count_once() {
    let hs = MockHomeserver::start().await;
    let (ctx, _net) = setup(&hs, "logins: {timeout_secs: 1}\n").await;
    let alice = user_id!("@alice:localhost");
    let p = ctx.start_login(alice, "password").await.unwrap();
    let answer = |name: &'static str| {
        let (ctx, id) = (ctx.clone(), p.process_id.clone());
        tokio::spawn(async move {
            let v = values(&[("username", name), ("password", PASSWORD)]);
            ctx.submit_login(alice, &id, "credentials", v).await.map(|p| p.status)
        })
    };
    let (a, b) = (answer("first"), answer("second"));
    let outcomes = [a.await.unwrap(), b.await.unwrap()];
    let done: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(LoginStatus::Done(l)) => Some(l.id.to_string()),
            _ => None,
        })
        .collect();
    // Both callers see the one outcome.
    assert_eq!(done.len(), 2, "{outcomes:?}");
    assert_eq!(done[0], done[1]);
    let stored = ctx.store().logins_of(alice).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id.as_str(), done[0]);
}

/// A relay must be a login that is in the chat.
#[tokio::test]
async fn only_a_login_in_the_chat_can_be_its_relay() {
    use crate::remote::PortalKey;
    let hs = MockHomeserver::start().await;
    let (ctx, net) = setup(&hs, "relay: {enabled: true, admin_only: false}\n").await;
    let room = room_id!("!p:localhost");
    let key = PortalKey::shared("c");
    let row = crate::store::PortalRow {
        key: key.clone(),
        room_id: Some(room.to_owned()),
        name: None,
        topic: None,
        avatar_url: None,
        metadata: None,
    };
    ctx.store().upsert_portal(&row).await.unwrap();
    let bot = user_id!("@_test_bot:localhost");
    let joined = crate::store::MemberRow::new(room, bot, crate::store::Membership::Join);
    ctx.store().set_membership(joined).await.unwrap();
    let alice = user_id!("@alice:localhost");
    let new = super::NewLogin { id: "a1".into(), remote_name: "A".into(), metadata: json!(null) };
    ctx.store().add_login(alice, &new, LoginState::Connected, 5).await.unwrap();
    hs.mock_send(room, "m.room.message").as_bot().ok().mount().await;
    let set = portal_message("$1", "@alice:localhost", "!fake set-relay");
    crate::route::route(&ctx, &*net, &set).await.unwrap();
    let reply = wait_for_body(&hs, "m.room.message").await;
    assert!(reply["body"].as_str().unwrap().contains("None of your logins"), "{reply}");
    assert_eq!(ctx.store().portal_relay(&key).await.unwrap(), None);
    ctx.store().add_login_to_portal(&"a1".into(), &key).await.unwrap();
    crate::route::route(
        &ctx,
        &*net,
        &portal_message("$2", "@alice:localhost", "!fake set-relay a1"),
    )
    .await
    .unwrap();
    assert_eq!(ctx.store().portal_relay(&key).await.unwrap().unwrap().id.as_str(), "a1");
}

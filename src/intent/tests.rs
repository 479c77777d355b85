//! Intent tests against the mock homeserver and an in-memory store.

use std::time::Duration;

use ruma::{OwnedUserId, RoomId, UserId, room_id, user_id};
use serde_json::json;

use super::*;
use crate::testing::MockHomeserver;

async fn setup() -> (MockHomeserver, Store) {
    let hs = MockHomeserver::start().await;
    let store = Store::connect_url("sqlite::memory:").await.unwrap();
    (hs, store)
}

fn intent(hs: &MockHomeserver, store: &Store, user: &UserId) -> Intent {
    Intent::new(hs.client(), store.clone(), user.to_owned()).unwrap()
}

async fn cache_joined(store: &Store, room: &RoomId, user: &UserId) {
    store.mark_registered(user.as_str()).await.unwrap();
    store.set_membership(room.as_str(), user.as_str(), Membership::Join, None, None).await.unwrap();
}

#[tokio::test]
async fn cached_ghost_send_is_exactly_one_request() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    cache_joined(&store, room, ghost).await;
    hs.mock_register().never().mount().await;
    hs.mock_join(room).never().mount().await;
    hs.mock_send(room, "m.room.message").as_user(ghost).ok().expect(1).mount().await;

    intent(&hs, &store, ghost).send_text(room, "hello", None).await.unwrap();
    assert_eq!(hs.received().await.len(), 1);
}

#[tokio::test]
async fn new_ghost_registers_joins_and_sends() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    hs.mock_register().for_user(ghost).as_bot().expect(1).mount().await;
    hs.mock_join(room).as_user(ghost).ok().expect(1).mount().await;
    hs.mock_send(room, "m.room.message").as_user(ghost).ok().expect(2).mount().await;

    let alice = intent(&hs, &store, ghost);
    alice.send_text(room, "one", None).await.unwrap();
    alice.send_text(room, "two", None).await.unwrap();
    assert!(store.is_registered(ghost.as_str()).await.unwrap());
    assert_eq!(
        store.membership(room.as_str(), ghost.as_str()).await.unwrap(),
        Some(Membership::Join)
    );
}

#[tokio::test]
async fn forbidden_join_makes_the_bot_invite_then_the_ghost_joins() {
    let (hs, store) = setup().await;
    let room = room_id!("!private:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost.as_str()).await.unwrap();
    hs.mock_join(room)
        .as_user(ghost)
        .forbidden("You are not invited to this room.")
        .up_to_n_times(1)
        .expect(1)
        .mount()
        .await;
    hs.mock_invite(room).as_bot().with_body(json!({ "user_id": ghost })).expect(1).mount().await;
    hs.mock_unban(room).never().mount().await;
    hs.mock_join(room).as_user(ghost).ok().expect(1).mount().await;

    assert!(intent(&hs, &store, ghost).ensure_joined(room).await.unwrap());
    assert_eq!(
        store.membership(room.as_str(), ghost.as_str()).await.unwrap(),
        Some(Membership::Join)
    );
}

#[tokio::test]
async fn banned_ghost_is_unbanned_invited_and_joined() {
    let (hs, store) = setup().await;
    let room = room_id!("!private:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost.as_str()).await.unwrap();
    hs.mock_join(room)
        .as_user(ghost)
        .forbidden("You are banned from this room")
        .up_to_n_times(1)
        .expect(1)
        .mount()
        .await;
    hs.mock_unban(room).as_bot().with_body(json!({ "user_id": ghost })).expect(1).mount().await;
    hs.mock_invite(room).as_bot().with_body(json!({ "user_id": ghost })).expect(1).mount().await;
    hs.mock_join(room).as_user(ghost).ok().expect(1).mount().await;

    intent(&hs, &store, ghost).ensure_joined(room).await.unwrap();
    let paths: Vec<String> = hs
        .received()
        .await
        .iter()
        .map(|r| r.url.path().rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(paths, ["join", "unban", "invite", "join"]);
}

#[tokio::test]
async fn ban_learned_from_a_refused_invite_leads_to_unban() {
    let (hs, store) = setup().await;
    let room = room_id!("!private:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost.as_str()).await.unwrap();
    hs.mock_join(room)
        .as_user(ghost)
        .forbidden("You are not invited")
        .up_to_n_times(1)
        .expect(1)
        .mount()
        .await;
    hs.mock_invite(room)
        .forbidden("@_test_alice:localhost is banned from the room")
        .up_to_n_times(1)
        .expect(1)
        .mount()
        .await;
    hs.mock_unban(room).as_bot().expect(1).mount().await;
    hs.mock_invite(room).as_bot().expect(1).mount().await;
    hs.mock_join(room).as_user(ghost).ok().expect(1).mount().await;

    intent(&hs, &store, ghost).ensure_joined(room).await.unwrap();
}

#[tokio::test]
async fn ten_concurrent_ensure_joined_make_one_join_request() {
    let (hs, store) = setup().await;
    let room = room_id!("!busy:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost.as_str()).await.unwrap();
    hs.mock_join(room)
        .as_user(ghost)
        .ok()
        .delay(Duration::from_millis(200))
        .expect(1)
        .mount()
        .await;

    let alice = intent(&hs, &store, ghost);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let alice = alice.clone();
            tokio::spawn(async move { alice.ensure_joined(room_id!("!busy:localhost")).await })
        })
        .collect();
    let mut joined_now = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() {
            joined_now += 1;
        }
    }
    assert_eq!(joined_now, 1);
    assert_eq!(hs.received().await.len(), 1);
    // Nothing is left behind per ghost once the join is done.
    assert_eq!(alice.client().joins_in_flight(), 0);
}

#[tokio::test]
async fn user_in_use_counts_as_registered_and_is_remembered() {
    let (hs, store) = setup().await;
    let ghost = user_id!("@_test_alice:localhost");
    hs.mock_register().for_user(ghost).user_in_use().expect(1).mount().await;

    let alice = intent(&hs, &store, ghost);
    alice.ensure_registered().await.unwrap();
    alice.ensure_registered().await.unwrap();
    assert!(store.is_registered(ghost.as_str()).await.unwrap());
}

#[tokio::test]
async fn the_bot_needs_no_registration_and_joins_plainly() {
    let (hs, store) = setup().await;
    let room = room_id!("!room:localhost");
    hs.mock_register().never().mount().await;
    hs.mock_join(room)
        .as_bot()
        .forbidden("You are not invited to this room.")
        .expect(1)
        .mount()
        .await;
    hs.mock_invite(room).never().mount().await;

    let bot = Intent::bot(hs.client(), store.clone());
    bot.ensure_registered().await.unwrap();
    let err = bot.ensure_joined(room).await.unwrap_err();
    assert!(err.is_errcode("M_FORBIDDEN"));
}

#[tokio::test]
async fn intents_outside_the_namespace_are_refused_without_requests() {
    let (hs, store) = setup().await;
    hs.mock_register().never().mount().await;
    let alice: OwnedUserId = user_id!("@alice:localhost").to_owned();
    let err = Intent::new(hs.client(), store, alice).unwrap_err();
    assert!(matches!(err, Error::NotInNamespace { .. }));
    assert!(hs.received().await.is_empty());
}

#[tokio::test]
async fn displayname_is_set_only_when_it_differs() {
    let (hs, store) = setup().await;
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost.as_str()).await.unwrap();
    hs.mock_get_profile(ghost).ok_body(json!({ "displayname": "Alice" })).expect(2).mount().await;
    hs.mock_set_profile(ghost, "displayname")
        .as_user(ghost)
        .with_body(json!({ "displayname": "Alice B" }))
        .expect(1)
        .mount()
        .await;

    let alice = intent(&hs, &store, ghost);
    assert!(!alice.set_displayname("Alice").await.unwrap());
    assert!(alice.set_displayname("Alice B").await.unwrap());
}

#[tokio::test]
async fn room_profile_is_sent_only_when_the_cached_member_differs() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    cache_joined(&store, room, ghost).await;
    hs.mock_set_state(room, "m.room.member", ghost.as_str())
        .as_user(ghost)
        .with_body(json!({ "membership": "join", "displayname": "Alice (Network)" }))
        .expect(1)
        .mount()
        .await;

    let alice = intent(&hs, &store, ghost);
    assert!(alice.set_room_profile(room, Some("Alice (Network)"), None).await.unwrap());
    assert!(!alice.set_room_profile(room, Some("Alice (Network)"), None).await.unwrap());
}

#[tokio::test]
async fn power_level_is_raised_by_the_bot_and_cached() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let bot = MockHomeserver::bot();
    cache_joined(&store, room, ghost).await;
    cache_joined(&store, room, &bot).await;
    hs.mock_get_state(room, "m.room.power_levels", "")
        .ok_body(json!({ "users": { bot.as_str(): 100 }, "users_default": 0 }))
        .expect(1)
        .mount()
        .await;
    hs.mock_set_state(room, "m.room.power_levels", "")
        .as_bot()
        .with_body(json!({ "users": { bot.as_str(): 100, ghost.as_str(): 50 } }))
        .expect(1)
        .mount()
        .await;

    let alice = intent(&hs, &store, ghost);
    assert!(alice.ensure_power_level(room, 50).await.unwrap());
    assert!(!alice.ensure_power_level(room, 50).await.unwrap());
    let cached = alice.power_levels(room).await.unwrap();
    assert_eq!(cached["users"][ghost.as_str()], 50);
}

#[tokio::test]
async fn power_level_cannot_exceed_the_bots_own() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let levels = json!({ "users": { MockHomeserver::bot().as_str(): 50 } });
    store
        .set_room_state(room.as_str(), RoomStateField::PowerLevels, &levels.to_string())
        .await
        .unwrap();
    hs.mock_set_state(room, "m.room.power_levels", "").never().mount().await;

    let err = intent(&hs, &store, ghost).ensure_power_level(room, 100).await.unwrap_err();
    assert!(matches!(err, Error::NotPermitted(_)), "{err}");
}

#[tokio::test]
async fn error_and_leave_sends_a_notice_then_leaves() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    cache_joined(&store, room, ghost).await;
    hs.mock_send(room, "m.room.message")
        .as_user(ghost)
        .with_body(json!({ "msgtype": "m.notice", "body": "bridge error" }))
        .expect(1)
        .mount()
        .await;
    hs.mock_leave(room).as_user(ghost).expect(1).mount().await;

    intent(&hs, &store, ghost).error_and_leave(room, "bridge error").await.unwrap();
    assert_eq!(
        store.membership(room.as_str(), ghost.as_str()).await.unwrap(),
        Some(Membership::Leave)
    );
}

#[tokio::test]
async fn ensure_invited_is_skipped_when_the_store_knows() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost.as_str()).await.unwrap();
    hs.mock_invite(room).as_bot().with_body(json!({ "user_id": ghost })).expect(1).mount().await;

    let alice = intent(&hs, &store, ghost);
    assert!(alice.ensure_invited(room).await.unwrap());
    assert!(!alice.ensure_invited(room).await.unwrap());
}

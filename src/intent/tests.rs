//! Intent tests against the mock homeserver and an in-memory store.

use std::time::Duration;

use ruma::{
    OwnedUserId, RoomId, UserId,
    events::room::{
        message::{RoomMessageEventContent, RoomMessageEventContentWithoutRelation},
        power_levels::UserPowerLevel,
    },
    room_id, user_id,
};
use serde_json::{Value as JsonValue, json};

use super::*;
use crate::{
    store::{MemberRow, RoomStateField},
    testing::{MockHomeserver, state_event},
};

async fn setup() -> (MockHomeserver, Store) {
    let hs = MockHomeserver::start().await;
    let store = Store::connect_url("sqlite::memory:").await.unwrap();
    (hs, store)
}

fn intent(hs: &MockHomeserver, store: &Store, user: &UserId) -> Intent {
    Intent::new(hs.client(), store.clone(), user.to_owned()).unwrap()
}

async fn cache_joined(store: &Store, room: &RoomId, user: &UserId) {
    store.mark_registered(user).await.unwrap();
    store.set_membership(MemberRow::new(room, user, Membership::Join)).await.unwrap();
}

/// Marks the room's state fetched, so a join makes no state request.
async fn fetched(store: &Store, room: &RoomId) {
    store.set_members_fetched(room, true).await.unwrap();
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

    intent(&hs, &store, ghost).send_text(room, "hello").await.unwrap();
    assert_eq!(hs.received().await.len(), 1);
}

#[tokio::test]
async fn new_ghost_registers_joins_and_sends() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    fetched(&store, room).await;
    hs.mock_register().for_user(ghost).as_bot().expect(1).mount().await;
    hs.mock_join(room).as_user(ghost).ok().expect(1).mount().await;
    hs.mock_send(room, "m.room.message").as_user(ghost).ok().expect(2).mount().await;

    let alice = intent(&hs, &store, ghost);
    alice.send_text(room, "one").await.unwrap();
    alice.send_text(room, "two").await.unwrap();
    assert!(store.is_registered(ghost).await.unwrap());
    assert_eq!(store.membership(room, ghost).await.unwrap(), Some(Membership::Join));
}

#[tokio::test]
async fn forbidden_join_makes_the_bot_invite_then_the_ghost_joins() {
    let (hs, store) = setup().await;
    let room = room_id!("!private:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost).await.unwrap();
    fetched(&store, room).await;
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
    assert_eq!(store.membership(room, ghost).await.unwrap(), Some(Membership::Join));
}

/// A ban the cache knows is lifted before the invite.
#[tokio::test]
async fn banned_ghost_is_unbanned_invited_and_joined() {
    let (hs, store) = setup().await;
    let room = room_id!("!private:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost).await.unwrap();
    fetched(&store, room).await;
    store.set_membership(MemberRow::new(room, ghost, Membership::Ban)).await.unwrap();
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

/// A ban nobody told the cache about is learned from the room's state once the invite is
/// refused, whatever the refusal's text says.
#[tokio::test]
async fn ban_learned_from_the_room_state_after_a_refused_invite_leads_to_unban() {
    let (hs, store) = setup().await;
    let room = room_id!("!private:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost).await.unwrap();
    fetched(&store, room).await;
    hs.mock_join(room).as_user(ghost).forbidden("no").up_to_n_times(1).expect(1).mount().await;
    hs.mock_invite(room).forbidden("no").up_to_n_times(1).expect(1).mount().await;
    hs.mock_get_state(room, "m.room.member", ghost.as_str())
        .as_bot()
        .ok_body(json!({ "membership": "ban", "reason": "spam" }))
        .expect(1)
        .mount()
        .await;
    hs.mock_unban(room).as_bot().expect(1).mount().await;
    hs.mock_invite(room).as_bot().expect(1).mount().await;
    hs.mock_join(room).as_user(ghost).ok().expect(1).mount().await;

    intent(&hs, &store, ghost).ensure_joined(room).await.unwrap();
    assert_eq!(store.membership(room, ghost).await.unwrap(), Some(Membership::Join));
}

#[tokio::test]
async fn ten_concurrent_ensure_joined_make_one_join_request() {
    let (hs, store) = setup().await;
    let room = room_id!("!busy:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost).await.unwrap();
    fetched(&store, room).await;
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
    assert!(store.is_registered(ghost).await.unwrap());
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
    assert_eq!(err.kind(), Some(&ErrorKind::Forbidden));
}

#[tokio::test]
async fn intents_outside_the_namespace_are_refused_without_requests() {
    let (hs, store) = setup().await;
    hs.mock_register().never().mount().await;
    let alice: OwnedUserId = user_id!("@alice:localhost").to_owned();
    let err = Intent::new(hs.client(), store, alice).unwrap_err();
    assert!(matches!(err, client::Error::NotInNamespace { .. }));
    assert!(hs.received().await.is_empty());
}

#[tokio::test]
async fn displayname_is_set_only_when_it_differs() {
    let (hs, store) = setup().await;
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost).await.unwrap();
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

/// Caches a room's create event (whole) and power levels, and marks the room fetched.
async fn cache_room(
    store: &Store,
    room: &RoomId,
    version: &str,
    creator: &UserId,
    levels: JsonValue,
) {
    cache_room_with(store, room, json!({ "room_version": version }), creator, levels).await;
}

async fn cache_room_with(
    store: &Store,
    room: &RoomId,
    create: JsonValue,
    creator: &UserId,
    levels: JsonValue,
) {
    let create = state_event("m.room.create", "", creator, create);
    store.set_room_state(room, RoomStateField::Create, &create.to_string()).await.unwrap();
    store.set_room_state(room, RoomStateField::PowerLevels, &levels.to_string()).await.unwrap();
    fetched(store, room).await;
}

#[tokio::test]
async fn power_level_is_raised_by_the_bot_and_cached() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let bot = MockHomeserver::bot();
    cache_joined(&store, room, ghost).await;
    cache_joined(&store, room, &bot).await;
    hs.mock_room_state(room)
        .as_bot()
        .ok_body(json!([
            state_event("m.room.create", "", &bot, json!({ "room_version": "10", "creator": bot })),
            state_event(
                "m.room.power_levels",
                "",
                &bot,
                json!({ "users": { bot.as_str(): 100 }, "users_default": 0 })
            ),
        ]))
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
    assert_eq!(cached.for_user(ghost), UserPowerLevel::Int(50.into()));
    assert_eq!(alice.power_level(room).await.unwrap(), UserPowerLevel::Int(50.into()));
}

#[tokio::test]
async fn power_level_cannot_exceed_the_bots_own() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let human = user_id!("@alice:localhost");
    let levels = json!({ "users": { human.as_str(): 100, MockHomeserver::bot().as_str(): 50 } });
    cache_room(&store, room, "10", human, levels).await;
    hs.mock_set_state(room, "m.room.power_levels", "").never().mount().await;

    let err = intent(&hs, &store, ghost).ensure_power_level(room, 100).await.unwrap_err();
    assert!(matches!(err, IntentError::NotPermitted(_)), "{err}");
}

/// Room version 12: the bot created the room, so it is not in `users` and outranks everyone.
#[tokio::test]
async fn the_creator_of_a_version_12_room_raises_a_ghost() {
    let (hs, store) = setup().await;
    let room = room_id!("!v12:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let bot = MockHomeserver::bot();
    cache_joined(&store, room, &bot).await;
    cache_room(&store, room, "12", &bot, json!({ "users": { "@alice:localhost": 100 } })).await;
    hs.mock_set_state(room, "m.room.power_levels", "")
        .as_bot()
        .with_body(json!({ "users": { "@alice:localhost": 100, ghost.as_str(): 50 } }))
        .expect(1)
        .mount()
        .await;

    let bot_intent = Intent::bot(hs.client(), store.clone());
    assert_eq!(bot_intent.power_level(room).await.unwrap(), UserPowerLevel::Infinite);
    assert!(intent(&hs, &store, ghost).ensure_power_level(room, 50).await.unwrap());
    let sent = &hs.received().await[0];
    let body: JsonValue = serde_json::from_slice(&sent.body).unwrap();
    assert!(body["users"].get(bot.as_str()).is_none(), "a creator is never listed: {body}");
    // Nothing raises the bot itself: a creator outranks every level.
    assert!(!bot_intent.ensure_power_level(room, 100).await.unwrap());
}

/// Room version 12: `additional_creators` outrank everyone too; a room whose creator is a
/// human gives the bot only what `users` says.
#[tokio::test]
async fn additional_creators_count_and_other_users_have_their_listed_level() {
    let (hs, store) = setup().await;
    let bot = MockHomeserver::bot();
    let human = user_id!("@alice:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let shared = room_id!("!shared:localhost");
    let create = json!({ "room_version": "12", "additional_creators": [bot] });
    cache_room_with(&store, shared, create, human, json!({})).await;
    let levels = Intent::bot(hs.client(), store.clone()).power_levels(shared).await.unwrap();
    assert_eq!(levels.for_user(&bot), UserPowerLevel::Infinite);
    assert_eq!(levels.for_user(human), UserPowerLevel::Infinite);

    let theirs = room_id!("!theirs:localhost");
    cache_room(&store, theirs, "12", human, json!({ "users": { bot.as_str(): 0 } })).await;
    hs.mock_set_state(theirs, "m.room.power_levels", "").never().mount().await;
    let err = intent(&hs, &store, ghost).ensure_power_level(theirs, 50).await.unwrap_err();
    assert!(matches!(err, IntentError::NotPermitted(_)), "{err}");
}

/// A create event cached as content only (as older versions kept it) names no creator: the
/// room's state is fetched again.
#[tokio::test]
async fn a_create_event_cached_without_its_sender_is_fetched_again() {
    let (hs, store) = setup().await;
    let room = room_id!("!old:localhost");
    let bot = MockHomeserver::bot();
    store.set_room_state(room, RoomStateField::Create, r#"{"room_version":"12"}"#).await.unwrap();
    store.set_room_state(room, RoomStateField::PowerLevels, "{}").await.unwrap();
    hs.mock_room_state(room)
        .as_bot()
        .ok_body(json!([state_event("m.room.create", "", &bot, json!({ "room_version": "12" }))]))
        .expect(1)
        .mount()
        .await;
    let bot_intent = Intent::bot(hs.client(), store.clone());
    assert_eq!(bot_intent.power_level(room).await.unwrap(), UserPowerLevel::Infinite);
    assert_eq!(bot_intent.power_level(room).await.unwrap(), UserPowerLevel::Infinite);
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
    assert_eq!(store.membership(room, ghost).await.unwrap(), Some(Membership::Leave));
}

#[tokio::test]
async fn ensure_invited_is_skipped_when_the_store_knows() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost).await.unwrap();
    hs.mock_invite(room).as_bot().with_body(json!({ "user_id": ghost })).expect(1).mount().await;

    let alice = intent(&hs, &store, ghost);
    assert!(alice.ensure_invited(room).await.unwrap());
    assert!(!alice.ensure_invited(room).await.unwrap());
}

/// A human created the room and invited the bot: the bot's join fetches the room's state, so
/// the human (with their display name), the power levels and the creator are known.
#[tokio::test]
async fn a_join_fetches_the_rooms_members_and_state_once() {
    let (hs, store) = setup().await;
    let room = room_id!("!dm:localhost");
    let bot = MockHomeserver::bot();
    let human = user_id!("@alice:localhost");
    let ghost = user_id!("@_test_ghost:localhost");
    store.mark_registered(ghost).await.unwrap();
    hs.mock_join(room).ok().expect(2).mount().await;
    hs.mock_room_state(room)
        .as_bot()
        .ok_body(json!([
            state_event(
                "m.room.create",
                "",
                human,
                json!({ "room_version": "10", "creator": human })
            ),
            state_event(
                "m.room.member",
                human.as_str(),
                human,
                json!({ "membership": "join", "displayname": "Alice" })
            ),
            state_event(
                "m.room.member",
                bot.as_str(),
                &bot,
                json!({ "membership": "join", "displayname": "Bridge bot" })
            ),
            state_event(
                "m.room.member",
                "@bob:localhost",
                human,
                json!({ "membership": "leave", "displayname": 7 })
            ),
            state_event(
                "m.room.power_levels",
                "",
                human,
                json!({ "users": { human.as_str(): 100, bot.as_str(): 50 } })
            ),
        ]))
        .expect(1)
        .mount()
        .await;

    let bot_intent = Intent::bot(hs.client(), store.clone());
    assert!(bot_intent.ensure_joined(room).await.unwrap());
    assert!(store.members_fetched(room).await.unwrap());
    let joined = bot_intent.members_with(room, Membership::Join).await.unwrap();
    let names: Vec<_> =
        joined.iter().map(|m| (m.user_id.as_str(), m.displayname.as_deref())).collect();
    assert_eq!(
        names,
        [("@_test_bot:localhost", Some("Bridge bot")), ("@alice:localhost", Some("Alice"))]
    );
    let left = store.member(room, user_id!("@bob:localhost")).await.unwrap().unwrap();
    assert_eq!((left.membership, left.displayname), (Membership::Leave, None));
    assert_eq!(
        bot_intent.power_levels(room).await.unwrap().for_user(&bot),
        UserPowerLevel::Int(50.into())
    );
    // A second user's join, and lookups, fetch nothing more.
    intent(&hs, &store, ghost).ensure_joined(room).await.unwrap();
    bot_intent.members_with(room, Membership::Join).await.unwrap();
}

/// Member lookups fetch a room never fetched (once) when the intent is in it; where it is
/// not, or the homeserver refuses, the cache answers.
#[tokio::test]
async fn member_lookups_fetch_a_room_not_fetched_yet() {
    let (hs, store) = setup().await;
    let bot = MockHomeserver::bot();
    let (room, kicked, elsewhere) =
        (room_id!("!old:localhost"), room_id!("!kicked:localhost"), room_id!("!else:localhost"));
    cache_joined(&store, room, &bot).await;
    cache_joined(&store, kicked, &bot).await;
    let human = user_id!("@alice:localhost");
    hs.mock_room_state(room)
        .as_bot()
        .ok_body(json!([state_event(
            "m.room.member",
            human.as_str(),
            human,
            json!({ "membership": "join" })
        )]))
        .expect(1)
        .mount()
        .await;
    hs.mock_room_state(kicked).forbidden("You are not in the room").expect(2).mount().await;
    hs.mock_room_state(elsewhere).never().mount().await;

    let bot = Intent::bot(hs.client(), store.clone());
    for _ in 0..2 {
        let joined = bot.members_with(room, Membership::Join).await.unwrap();
        assert_eq!(joined.len(), 2);
        assert_eq!(bot.members_with(kicked, Membership::Join).await.unwrap().len(), 1);
        assert!(bot.members_with(elsewhere, Membership::Join).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn display_names_come_from_the_room_then_the_profile() {
    let (hs, store) = setup().await;
    let room = room_id!("!room:localhost");
    fetched(&store, room).await;
    let alice = user_id!("@alice:localhost");
    let bob = user_id!("@bob:localhost");
    let carol = user_id!("@carol:localhost");
    store
        .set_membership(MemberRow {
            displayname: Some("Alice here"),
            ..MemberRow::new(room, alice, Membership::Join)
        })
        .await
        .unwrap();
    hs.mock_get_profile(alice).never().mount().await;
    hs.mock_get_profile(bob).ok_body(json!({ "displayname": "Bob" })).expect(1).mount().await;
    hs.mock_get_profile(carol).error(404, "M_NOT_FOUND", "Profile was not found").mount().await;

    let bot = Intent::bot(hs.client(), store.clone());
    assert_eq!(bot.display_name(room, alice).await.unwrap().as_deref(), Some("Alice here"));
    assert_eq!(bot.display_name(room, bob).await.unwrap().as_deref(), Some("Bob"));
    assert_eq!(bot.display_name(room, carol).await.unwrap(), None);
}

/// Inviting someone the cache knows is in the room sends nothing with `check_cache`; a refusal
/// because they are in the room already (as Synapse words it) is success once the room's state
/// says so; a refusal for anything else stays an error.
#[tokio::test]
async fn inviting_a_user_already_in_the_room_succeeds() {
    let (hs, store) = setup().await;
    let room = room_id!("!room:localhost");
    let bot = MockHomeserver::bot();
    cache_joined(&store, room, &bot).await;
    fetched(&store, room).await;
    let (cached, joined, stranger) = (
        user_id!("@cached:localhost"),
        user_id!("@joined:localhost"),
        user_id!("@stranger:localhost"),
    );
    store.set_membership(MemberRow::new(room, cached, Membership::Join)).await.unwrap();
    hs.mock_invite(room).with_body(json!({ "user_id": cached })).never().mount().await;
    hs.mock_invite(room)
        .with_body(json!({ "user_id": joined }))
        .forbidden("@joined:localhost is already in the room.")
        .expect(1)
        .mount()
        .await;
    hs.mock_get_state(room, "m.room.member", joined.as_str())
        .ok_body(json!({ "membership": "join", "displayname": "Joined" }))
        .expect(1)
        .mount()
        .await;
    hs.mock_invite(room)
        .with_body(json!({ "user_id": stranger }))
        .forbidden("You don't have permission to invite users")
        .expect(1)
        .mount()
        .await;
    hs.mock_get_state(room, "m.room.member", stranger.as_str())
        .error(404, "M_NOT_FOUND", "Event not found.")
        .expect(1)
        .mount()
        .await;

    let bot = Intent::bot(hs.client(), store.clone());
    assert!(!bot.invite(room, cached).check_cache().await.unwrap());
    assert!(!bot.invite(room, joined).await.unwrap());
    assert!(!bot.invite(room, joined).check_cache().await.unwrap(), "known now: no request");
    assert_eq!(bot.display_name(room, joined).await.unwrap().as_deref(), Some("Joined"));
    let err = bot.invite(room, stranger).await.unwrap_err();
    assert_eq!(err.kind(), Some(&ErrorKind::Forbidden));
}

#[tokio::test]
async fn a_room_the_bot_creates_starts_with_its_state_cached() {
    let (hs, store) = setup().await;
    let room = room_id!("!new:localhost");
    let bot = MockHomeserver::bot();
    hs.mock_create_room(room).as_bot().ok().expect(1).mount().await;
    hs.mock_room_state(room)
        .as_bot()
        .ok_body(json!([
            state_event("m.room.create", "", &bot, json!({ "room_version": "12" })),
            state_event("m.room.member", bot.as_str(), &bot, json!({ "membership": "join" })),
            state_event("m.room.power_levels", "", &bot, json!({})),
        ]))
        .expect(1)
        .mount()
        .await;

    let bot_intent = Intent::bot(hs.client(), store.clone());
    let created = bot_intent.create_room(create_room::v3::Request::new()).await.unwrap();
    assert_eq!(created, room);
    assert_eq!(store.membership(room, &bot).await.unwrap(), Some(Membership::Join));
    assert_eq!(bot_intent.power_level(room).await.unwrap(), UserPowerLevel::Infinite);
}

fn ts(ms: u64) -> ruma::MilliSecondsSinceUnixEpoch {
    ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new(ms).unwrap())
}

/// `.at(ts)` reaches the request as `?ts=` and `.txn_id(id)` as the path's transaction ID; a
/// plain send has no `ts` and a fresh transaction ID each time.
#[tokio::test]
async fn a_send_carries_its_timestamp_and_transaction_id() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    cache_joined(&store, room, ghost).await;
    hs.mock_send(room, "m.room.message")
        .as_user(ghost)
        .with_query("ts", "1600000000000")
        .with_body(json!({ "body": "old" }))
        .expect(1)
        .mount()
        .await;
    hs.mock_send(room, "m.room.message").as_user(ghost).without_query("ts").expect(2).mount().await;

    let alice = intent(&hs, &store, ghost);
    let sent = alice.send_text(room, "old").at(ts(1_600_000_000_000)).txn_id("remote-17").await;
    assert_eq!(sent.unwrap(), "$sent:localhost");
    alice.send_text(room, "now").await.unwrap();
    alice.send(room, &RoomMessageEventContent::text_plain("again")).await.unwrap();
    let txn_ids = hs.sent_txn_ids(room, "m.room.message").await;
    assert_eq!(txn_ids[0], "remote-17");
    assert!(txn_ids[1] != txn_ids[2] && !txn_ids[1..].contains(&txn_ids[0]), "{txn_ids:?}");
}

/// Edits, replies and reactions are sends too: the builder's options reach them alike.
#[tokio::test]
async fn edits_replies_and_reactions_take_the_send_options() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let (original, human) = (ruma::event_id!("$original:localhost"), user_id!("@bob:localhost"));
    cache_joined(&store, room, ghost).await;
    hs.mock_send(room, "m.room.message")
        .with_query("ts", "1600000000100")
        .with_body(json!({ "m.relates_to": { "rel_type": "m.replace", "event_id": original } }))
        .expect(1)
        .mount()
        .await;
    hs.mock_send(room, "m.room.message")
        .with_body(json!({ "m.relates_to": { "m.in_reply_to": { "event_id": original } } }))
        .expect(1)
        .mount()
        .await;
    hs.mock_send(room, "m.reaction")
        .with_query("ts", "1600000000200")
        .with_body(json!({ "m.relates_to": { "rel_type": "m.annotation", "key": "👍" } }))
        .expect(1)
        .mount()
        .await;

    let alice = intent(&hs, &store, ghost);
    let new_content = RoomMessageEventContentWithoutRelation::text_plain("edited");
    alice.edit(room, original, new_content).at(ts(1_600_000_000_100)).await.unwrap();
    let reply = RoomMessageEventContentWithoutRelation::text_plain("a reply");
    alice.reply(room, original, human, reply).txn_id("reply-1").await.unwrap();
    alice.react(room, original, "👍").at(ts(1_600_000_000_200)).txn_id("react-1").await.unwrap();
    assert_eq!(hs.sent_txn_ids(room, "m.reaction").await, ["react-1"]);
    assert_eq!(hs.sent_txn_ids(room, "m.room.message").await[1], "reply-1");
}

/// A redaction's reason goes in its body, its timestamp in `?ts=`, its transaction ID in the
/// path; without a reason the body has none.
#[tokio::test]
async fn a_redaction_carries_its_reason_timestamp_and_transaction_id() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let event = ruma::event_id!("$spam:localhost");
    cache_joined(&store, room, ghost).await;
    hs.mock_redact(room)
        .as_user(ghost)
        .with_query("ts", "1600000000300")
        .with_body(json!({ "reason": "spam" }))
        .expect(1)
        .mount()
        .await;
    hs.mock_redact(room).as_user(ghost).without_query("ts").expect(1).mount().await;

    let alice = intent(&hs, &store, ghost);
    let redaction =
        alice.redact(room, event).reason("spam").at(ts(1_600_000_000_300)).txn_id("redact-1");
    assert_eq!(redaction.await.unwrap(), "$redaction:localhost");
    alice.redact(room, event).await.unwrap();
    let txn_ids = hs.redaction_txn_ids(room).await;
    assert_eq!(txn_ids[0], "redact-1");
    assert_ne!(txn_ids[1], "redact-1");
    let second: JsonValue = serde_json::from_slice(&hs.received().await[1].body).unwrap();
    assert!(second.get("reason").is_none(), "{second}");
}

#[tokio::test]
async fn a_state_event_carries_its_timestamp() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let bot = MockHomeserver::bot();
    cache_joined(&store, room, &bot).await;
    hs.mock_set_state(room, "m.room.topic", "")
        .as_bot()
        .with_query("ts", "1600000000400")
        .with_body(json!({ "topic": "Remote chat" }))
        .expect(1)
        .mount()
        .await;

    let content = ruma::events::room::topic::RoomTopicEventContent::new("Remote chat".to_owned());
    let bot_intent = Intent::bot(hs.client(), store.clone());
    let sent = bot_intent.send_state(room, &ruma::events::EmptyStateKey, &content);
    assert_eq!(sent.at(ts(1_600_000_000_400)).await.unwrap(), "$state:localhost");
}

/// Leave, kick, ban and unban send their reason when given one and record the new membership.
#[tokio::test]
async fn membership_changes_take_a_reason_and_update_the_cache() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let bot = MockHomeserver::bot();
    let spammer = user_id!("@spammer:localhost");
    cache_joined(&store, room, &bot).await;
    hs.mock_ban(room)
        .as_bot()
        .with_body(json!({ "user_id": spammer, "reason": "spam" }))
        .expect(1)
        .mount()
        .await;
    hs.mock_unban(room).as_bot().with_body(json!({ "user_id": spammer })).expect(1).mount().await;
    hs.mock_kick(room).as_bot().with_body(json!({ "user_id": spammer })).expect(1).mount().await;
    hs.mock_leave(room)
        .as_bot()
        .with_body(json!({ "reason": "done here" }))
        .expect(1)
        .mount()
        .await;

    let bot_intent = Intent::bot(hs.client(), store.clone());
    let membership = async |user: &UserId| store.membership(room, user).await;
    bot_intent.ban(room, spammer).reason("spam").await.unwrap();
    assert_eq!(membership(spammer).await.unwrap(), Some(Membership::Ban));
    bot_intent.unban(room, spammer).await.unwrap();
    assert_eq!(membership(spammer).await.unwrap(), Some(Membership::Leave));
    bot_intent.kick(room, spammer).await.unwrap();
    bot_intent.leave(room).reason("done here").await.unwrap();
    assert_eq!(membership(&bot).await.unwrap(), Some(Membership::Leave));
    let bodies: Vec<JsonValue> =
        hs.received().await.iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
    assert!(bodies[1].get("reason").is_none() && bodies[2].get("reason").is_none(), "{bodies:?}");
}

#[tokio::test]
async fn an_upload_carries_its_content_type_and_file_name() {
    let (hs, store) = setup().await;
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost).await.unwrap();
    hs.mock("POST", "/_matrix/media/v3/upload")
        .as_user(ghost)
        .with_query("filename", "hello.txt")
        .ok_body(json!({ "content_uri": "mxc://localhost/hello" }))
        .expect(1)
        .mount()
        .await;

    let alice = intent(&hs, &store, ghost);
    let upload = alice.upload(b"hello".to_vec()).content_type("text/plain").filename("hello.txt");
    assert_eq!(upload.await.unwrap(), "mxc://localhost/hello");
    let request = &hs.received().await[0];
    assert_eq!(request.headers.get("content-type").unwrap(), "text/plain");
    assert_eq!(request.body, b"hello");
}

/// Without `.replace()` an alias that exists is an error; with it, the alias is deleted and
/// created again for the room.
#[tokio::test]
async fn an_alias_that_exists_is_replaced_only_when_asked() {
    let (hs, store) = setup().await;
    let alias_path = "/_matrix/client/v3/directory/room/#_test_portal:localhost";
    hs.mock("PUT", alias_path)
        .error(409, "M_UNKNOWN", "Room alias already exists")
        .up_to_n_times(2)
        .expect(2)
        .mount()
        .await;
    hs.mock("DELETE", alias_path).expect(1).mount().await;
    hs.mock("PUT", alias_path)
        .with_body(json!({ "room_id": "!new:localhost" }))
        .expect(1)
        .mount()
        .await;

    let bot = Intent::bot(hs.client(), store.clone());
    let (alias, room) =
        (ruma::room_alias_id!("#_test_portal:localhost"), room_id!("!new:localhost"));
    let err = bot.set_alias(alias, room).await.unwrap_err();
    assert_eq!(err.status(), Some(reqwest::StatusCode::CONFLICT));
    bot.set_alias(alias, room).replace().await.unwrap();
}

/// `m.direct` is read, the room added for the other user, and written back; a room listed
/// already writes nothing.
#[tokio::test]
async fn a_direct_room_is_added_to_m_direct_once() {
    let (hs, store) = setup().await;
    let ghost = user_id!("@_test_alice:localhost");
    let (human, room) = (user_id!("@bob:localhost"), room_id!("!dm:localhost"));
    store.mark_registered(ghost).await.unwrap();
    let path = format!("/_matrix/client/v3/user/{ghost}/account_data/m.direct");
    hs.mock("GET", &path)
        .as_user(ghost)
        .error(404, "M_NOT_FOUND", "Account data not found")
        .up_to_n_times(1)
        .expect(1)
        .mount()
        .await;
    hs.mock("GET", &path).ok_body(json!({ human.as_str(): [room] })).expect(1).mount().await;
    hs.mock("PUT", &path)
        .as_user(ghost)
        .with_body(json!({ human.as_str(): [room] }))
        .expect(1)
        .mount()
        .await;

    let alice = intent(&hs, &store, ghost);
    alice.add_direct_room(room, human).await.unwrap();
    alice.add_direct_room(room, human).await.unwrap();
}

#[tokio::test]
async fn typing_starts_with_a_timeout_and_stops() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    cache_joined(&store, room, ghost).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/typing/{ghost}");
    let typing = json!({ "typing": true, "timeout": 5000 });
    hs.mock("PUT", &path).as_user(ghost).with_body(typing).expect(1).mount().await;
    hs.mock("PUT", &path).with_body(json!({ "typing": false })).expect(1).mount().await;

    let alice = intent(&hs, &store, ghost);
    alice.typing(room, Duration::from_secs(5)).await.unwrap();
    alice.stop_typing(room).await.unwrap();
}

#[path = "tests_options.rs"]
mod options;

/// A real user (a double puppet) banned from a room stays banned: the bot lifts bans of its
/// ghosts only, not of people, whether the cache knew of the ban or the room's state told.
#[tokio::test]
async fn a_banned_real_user_is_not_unbanned_to_join() {
    let (hs, store) = setup().await;
    let alice = user_id!("@alice:localhost");
    let known = room_id!("!known:localhost");
    let learned = room_id!("!learned:localhost");
    for room in [known, learned] {
        fetched(&store, room).await;
        hs.mock_join(room).with_token("alice-token").forbidden("You are banned").mount().await;
        hs.mock_unban(room).never().mount().await;
    }
    store.set_membership(MemberRow::new(known, alice, Membership::Ban)).await.unwrap();
    hs.mock_invite(known).never().mount().await;
    hs.mock_invite(learned).as_bot().forbidden("banned").expect(1).mount().await;
    hs.mock_get_state(learned, "m.room.member", alice.as_str())
        .as_bot()
        .ok_body(json!({ "membership": "ban" }))
        .mount()
        .await;
    let client = hs.client().for_user(alice, crate::Secret::new(String::from("alice-token")), None);
    let intent = Intent::new(client.unwrap(), store.clone(), alice.to_owned()).unwrap();
    for room in [known, learned] {
        assert!(intent.ensure_joined(room).await.is_err(), "{room}");
        assert_ne!(store.membership(room, alice).await.unwrap(), Some(Membership::Join));
    }
}

/// Sends and redactions are retried with their transaction ID, and a refusal is the
/// homeserver's error with its kind.
#[tokio::test]
async fn sends_and_redactions_retry_with_their_transaction_id_and_keep_refusals() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let event = ruma::event_id!("$spam:localhost");
    cache_joined(&store, room, ghost).await;
    hs.mock_send(room, "m.room.message").status(503).up_to_n_times(1).expect(1).mount().await;
    hs.mock_send(room, "m.room.message").ok().up_to_n_times(1).expect(1).mount().await;
    hs.mock_send(room, "m.room.message").forbidden("not allowed").expect(1).mount().await;
    hs.mock_redact(room).rate_limited(1).up_to_n_times(1).expect(1).mount().await;
    hs.mock_redact(room).ok().up_to_n_times(1).expect(1).mount().await;
    hs.mock_redact(room).error(404, "M_NOT_FOUND", "no such event").expect(1).mount().await;

    let alice = intent(&hs, &store, ghost);
    assert_eq!(alice.send_text(room, "hi").await.unwrap(), "$sent:localhost");
    let txn_ids = hs.sent_txn_ids(room, "m.room.message").await;
    assert_eq!(txn_ids.len(), 2);
    assert_eq!(txn_ids[0], txn_ids[1]);
    let err = alice.send_text(room, "again").await.unwrap_err();
    assert_eq!(err.kind(), Some(&ErrorKind::Forbidden), "{err}");
    assert_eq!(err.to_string(), "homeserver answered 403 Forbidden M_FORBIDDEN: not allowed");

    assert_eq!(alice.redact(room, event).await.unwrap(), "$redaction:localhost");
    let txn_ids = hs.redaction_txn_ids(room).await;
    assert_eq!(txn_ids.len(), 2);
    assert_eq!(txn_ids[0], txn_ids[1]);
    let err = alice.redact(room, event).await.unwrap_err();
    assert_eq!(err.kind(), Some(&ErrorKind::NotFound), "{err}");
}

//! The options of the intent's actions: cache control, helpers, extra member content,
//! de-duplicated typing and presence, pinned events, and real users' intents.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    UserId, event_id, presence::PresenceState, room_alias_id, room_id, serde::JsonObject, user_id,
};
use serde_json::{Value as JsonValue, json};
use wiremock::{Request, Respond, ResponseTemplate};

use super::{cache_joined, cache_room, fetched, intent, setup};
use crate::{
    intent::Intent,
    secret::Secret,
    store::{MemberRow, Membership},
    testing::{MockHomeserver, state_event},
};

fn extra(key: &str, value: JsonValue) -> JsonObject {
    let mut extra = JsonObject::new();
    extra.insert(key.to_owned(), value);
    extra
}

#[tokio::test]
async fn ensure_joined_trusts_the_cache_unless_told_to_ignore_it() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    cache_joined(&store, room, ghost).await;
    fetched(&store, room).await;
    hs.mock_join(room).as_user(ghost).ok().expect(1).mount().await;

    let alice = intent(&hs, &store, ghost);
    assert!(!alice.ensure_joined(room).await.unwrap(), "a cache hit makes no request");
    assert_eq!(hs.received().await.len(), 0);
    assert!(alice.ensure_joined(room).ignore_cache().await.unwrap());
    assert_eq!(hs.received().await.len(), 1);
}

#[tokio::test]
async fn a_helper_account_invites_instead_of_the_bot() {
    let (hs, store) = setup().await;
    let room = room_id!("!ghost-admin:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let admin = user_id!("@_test_admin:localhost");
    store.mark_registered(ghost).await.unwrap();
    cache_joined(&store, room, admin).await;
    fetched(&store, room).await;
    hs.mock_join(room).as_user(ghost).forbidden("not invited").up_to_n_times(1).mount().await;
    hs.mock_invite(room).as_bot().never().mount().await;
    hs.mock_invite(room)
        .as_user(admin)
        .with_body(json!({ "user_id": ghost }))
        .expect(1)
        .mount()
        .await;
    hs.mock_join(room).as_user(ghost).ok().expect(1).mount().await;

    let helper = intent(&hs, &store, admin);
    assert!(intent(&hs, &store, ghost).ensure_joined(room).helper(&helper).await.unwrap());
}

#[tokio::test]
async fn extra_content_sends_member_state_events() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let bot = MockHomeserver::bot();
    let target = user_id!("@bob:localhost");
    store.mark_registered(ghost).await.unwrap();
    cache_joined(&store, room, &bot).await;
    fetched(&store, room).await;
    for action in ["join", "invite", "leave", "kick", "ban", "unban"] {
        hs.mock("POST", format!("/_matrix/client/v3/rooms/{room}/{action}")).never().mount().await;
    }
    hs.mock_get_profile(ghost).ok_body(json!({ "displayname": "Alice" })).mount().await;
    let member = |user: &ruma::UserId, body: JsonValue| {
        hs.mock_set_state(room, "m.room.member", user.as_str()).with_body(body).expect(1)
    };
    // A join gets the global profile filled in, as `/join` would.
    member(ghost, json!({ "membership": "join", "displayname": "Alice", "k": "join" }))
        .as_user(ghost)
        .mount()
        .await;
    member(ghost, json!({ "membership": "leave", "k": "leave" })).as_user(ghost).mount().await;
    member(target, json!({ "membership": "invite", "reason": "hi", "k": "invite" }))
        .as_bot()
        .mount()
        .await;
    member(target, json!({ "membership": "ban", "k": "ban" })).as_bot().mount().await;
    member(target, json!({ "membership": "leave", "k": "kick-or-unban" }))
        .as_bot()
        .expect(2)
        .mount()
        .await;

    let alice = intent(&hs, &store, ghost);
    alice.ensure_joined(room).extra_content(extra("k", "join".into())).await.unwrap();
    alice.leave(room).extra_content(extra("k", "leave".into())).await.unwrap();
    let bot = Intent::bot(hs.client(), store.clone());
    let invited =
        bot.invite(room, target).reason("hi").extra_content(extra("k", "invite".into())).await;
    assert!(invited.unwrap());
    bot.ban(room, target).extra_content(extra("k", "ban".into())).await.unwrap();
    bot.unban(room, target).extra_content(extra("k", "kick-or-unban".into())).await.unwrap();
    bot.kick(room, target).extra_content(extra("k", "kick-or-unban".into())).await.unwrap();
    assert_eq!(store.membership(room, target).await.unwrap(), Some(Membership::Leave));
}

#[tokio::test]
async fn check_cache_skips_an_invite_the_cache_knows() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let bot = MockHomeserver::bot();
    let invited = user_id!("@bob:localhost");
    cache_joined(&store, room, &bot).await;
    fetched(&store, room).await;
    store.set_membership(MemberRow::new(room, invited, Membership::Invite)).await.unwrap();
    hs.mock_invite(room).as_bot().expect(1).mount().await;

    let bot = Intent::bot(hs.client(), store.clone());
    assert!(!bot.invite(room, invited).check_cache().await.unwrap());
    assert_eq!(hs.received().await.len(), 0);
    assert!(bot.invite(room, invited).await.unwrap(), "without check_cache it is sent");
}

#[tokio::test]
async fn power_levels_come_from_the_cache_unless_told_to_ignore_it() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let bot = MockHomeserver::bot();
    let levels = json!({ "users": { bot.as_str(): 100 } });
    cache_room(&store, room, "10", &bot, levels).await;
    hs.mock_room_state(room)
        .as_bot()
        .ok_body(json!([
            state_event("m.room.create", "", &bot, json!({ "room_version": "10" })),
            state_event("m.room.power_levels", "", &bot, json!({ "users": { bot.as_str(): 50 } })),
        ]))
        .expect(1)
        .mount()
        .await;

    let intent = Intent::bot(hs.client(), store.clone());
    assert_eq!(intent.power_level(room).await.unwrap(), ruma::int!(100));
    assert_eq!(hs.received().await.len(), 0, "a cache hit makes no request");
    let fresh = intent.power_levels(room).ignore_cache().await.unwrap();
    assert_eq!(fresh.for_user(&bot), ruma::int!(50));
    assert_eq!(intent.power_level(room).await.unwrap(), ruma::int!(50), "the answer is cached");
}

#[tokio::test]
async fn member_lookups_fall_back_to_the_server_and_fill_the_cache() {
    let (hs, store) = setup().await;
    let room = room_id!("!elsewhere:localhost");
    let bob = user_id!("@bob:localhost");
    hs.mock_get_state(room, "m.room.member", bob.as_str())
        .as_bot()
        .ok_body(json!({ "membership": "join", "displayname": "Bob", "avatar_url": "mxc://x/y" }))
        .expect(2)
        .mount()
        .await;

    let bot = Intent::bot(hs.client(), store.clone());
    let member = bot.member(room, bob).await.unwrap().unwrap();
    assert_eq!(member.membership, Membership::Join);
    assert_eq!(bot.display_name(room, bob).await.unwrap().as_deref(), Some("Bob"));
    let avatar = bot.room_avatar_url(room, bob).await.unwrap();
    assert_eq!(avatar.as_deref().map(|a| a.as_str()), Some("mxc://x/y"));
    assert_eq!(hs.received().await.len(), 1, "the cache answers after the first lookup");
    let fresh = bot.display_name(room, bob).ignore_cache().await.unwrap();
    assert_eq!(fresh.as_deref(), Some("Bob"));
    assert_eq!(hs.received().await.len(), 2);
}

#[tokio::test]
async fn members_are_filtered_by_several_memberships() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let bot = MockHomeserver::bot();
    cache_joined(&store, room, &bot).await;
    fetched(&store, room).await;
    for (user, membership) in [
        ("@a:localhost", Membership::Join),
        ("@b:localhost", Membership::Invite),
        ("@c:localhost", Membership::Leave),
        ("@d:localhost", Membership::Ban),
    ] {
        store
            .set_membership(MemberRow::new(room, <&UserId>::try_from(user).unwrap(), membership))
            .await
            .unwrap();
    }

    let bot_intent = Intent::bot(hs.client(), store.clone());
    let present = bot_intent.members(room, &[Membership::Join, Membership::Invite]).await.unwrap();
    let ids: Vec<_> = present.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(ids, ["@_test_bot:localhost", "@a:localhost", "@b:localhost"]);
    assert_eq!(hs.received().await.len(), 0);
}

#[tokio::test]
async fn typing_and_presence_repeats_are_suppressed() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    cache_joined(&store, room, ghost).await;
    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/{ghost}");
    hs.mock("PUT", &typing).with_body(json!({ "typing": true })).expect(2).mount().await;
    hs.mock("PUT", &typing).with_body(json!({ "typing": false })).expect(1).mount().await;
    let presence = format!("/_matrix/client/v3/presence/{ghost}/status");
    hs.mock("PUT", &presence).as_user(ghost).expect(3).mount().await;

    let alice = intent(&hs, &store, ghost);
    let five = Duration::from_secs(5);
    assert!(alice.typing(room, five).await.unwrap());
    assert!(!alice.typing(room, five).await.unwrap(), "a repeat is suppressed");
    assert!(alice.typing(room, five).ignore_cache().await.unwrap());
    assert!(alice.stop_typing(room).await.unwrap());
    assert!(!alice.stop_typing(room).await.unwrap());

    assert!(alice.set_presence(PresenceState::Online).await.unwrap());
    assert!(!alice.set_presence(PresenceState::Online).await.unwrap());
    assert!(alice.set_presence(PresenceState::Online).status("busy").await.unwrap());
    assert!(alice.set_presence(PresenceState::Online).status("busy").ignore_cache().await.unwrap());
}

/// A room's pinned events on the mock homeserver: read and written as the real thing would.
#[derive(Clone, Default)]
struct PinnedState {
    inner: Arc<Mutex<Pinned>>,
}

#[derive(Default)]
struct Pinned {
    event: Option<(String, Vec<String>)>,
    writes: usize,
    /// Another writer's list, written right after our next write (and losing it).
    clobber_with: Option<Vec<String>>,
}

impl Respond for PinnedState {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = self.inner.lock().unwrap();
        if request.method.as_str() == "PUT" {
            let body: JsonValue = serde_json::from_slice(&request.body).unwrap();
            let list = body["pinned"].as_array().unwrap().iter();
            let list = list.map(|e| e.as_str().unwrap().to_owned()).collect();
            state.writes += 1;
            let id = format!("$pins{}", state.writes);
            state.event = Some((id.clone(), list));
            if let Some(theirs) = state.clobber_with.take() {
                state.event = Some(("$theirs".to_owned(), theirs));
            }
            return ResponseTemplate::new(200).set_body_json(json!({ "event_id": id }));
        }
        match &state.event {
            Some((id, list)) => ResponseTemplate::new(200).set_body_json(json!({
                "type": "m.room.pinned_events", "state_key": "", "event_id": id,
                "sender": "@someone:localhost", "origin_server_ts": 1,
                "content": { "pinned": list },
            })),
            None => ResponseTemplate::new(404)
                .set_body_json(json!({ "errcode": "M_NOT_FOUND", "error": "no" })),
        }
    }
}

#[tokio::test]
async fn pins_are_read_modified_and_written_without_losing_changes() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    cache_joined(&store, room, ghost).await;
    let pinned = PinnedState::default();
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.pinned_events/");
    hs.mock_prefix("GET", &path).as_user(ghost).respond_with(pinned.clone()).mount().await;
    hs.mock_prefix("PUT", &path).as_user(ghost).respond_with(pinned.clone()).mount().await;

    let alice = intent(&hs, &store, ghost);
    assert!(alice.pinned_events(room).await.unwrap().is_empty());
    // Pins made at once by this process all stand.
    let ids = ["$a:localhost", "$b:localhost", "$c:localhost", "$d:localhost"];
    let pins = ids.iter().map(|id| {
        let alice = alice.clone();
        let id = ruma::EventId::parse(*id).unwrap();
        async move { alice.pin(room_id!("!portal:localhost"), &id).await }
    });
    for pinned_now in futures_util::future::join_all(pins).await {
        assert!(pinned_now.unwrap());
    }
    let mut now: Vec<String> =
        alice.pinned_events(room).await.unwrap().iter().map(ToString::to_string).collect();
    now.sort();
    assert_eq!(now, ids);
    assert!(!alice.pin(room, event_id!("$a:localhost")).await.unwrap(), "pinned already");

    // Someone else writes right after us, from what they read before: ours is made again.
    pinned.inner.lock().unwrap().clobber_with = Some(vec!["$x:localhost".to_owned()]);
    assert!(alice.pin(room, event_id!("$e:localhost")).await.unwrap());
    let now = alice.pinned_events(room).await.unwrap();
    assert_eq!(now, [event_id!("$x:localhost"), event_id!("$e:localhost")]);
    assert!(alice.unpin(room, event_id!("$x:localhost")).await.unwrap());
    assert_eq!(alice.pinned_events(room).await.unwrap(), [event_id!("$e:localhost")]);
}

#[tokio::test]
async fn a_real_users_intent_sends_with_their_token_and_no_user_id() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let alice = user_id!("@alice:localhost");
    store.set_membership(MemberRow::new(room, alice, Membership::Join)).await.unwrap();
    hs.mock_register().never().mount().await;
    hs.mock_send(room, "m.room.message")
        .with_token("alice_token")
        .without_query("user_id")
        .ok()
        .expect(1)
        .mount()
        .await;

    let client = hs.client();
    assert!(Intent::new(client.clone(), store.clone(), alice.to_owned()).is_err());
    let user_client = client.for_user(alice, Secret::new("alice_token"), None).unwrap();
    let real = Intent::new(user_client, store.clone(), alice.to_owned()).unwrap();
    assert!(real.is_real_user() && !real.is_bot());
    real.send_text(room, "from my phone").await.unwrap();
    // It acts as nobody else.
    let ghost = user_id!("@_test_ghost:localhost");
    assert!(
        real.client()
            .send(ruma::api::client::account::whoami::v3::Request::new(), Some(ghost))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_real_user_is_helped_into_a_room_by_the_bot() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let alice = user_id!("@alice:localhost");
    fetched(&store, room).await;
    hs.mock_join(room).with_token("alice_token").forbidden("no").up_to_n_times(1).mount().await;
    hs.mock_invite(room).as_bot().with_body(json!({ "user_id": alice })).expect(1).mount().await;
    hs.mock_join(room)
        .with_token("alice_token")
        .without_query("user_id")
        .ok()
        .expect(1)
        .mount()
        .await;

    let user_client = hs.client().for_user(alice, Secret::new("alice_token"), None).unwrap();
    let real = Intent::new(user_client, store.clone(), alice.to_owned()).unwrap();
    assert!(real.ensure_joined(room).await.unwrap());
}

#[tokio::test]
async fn leaving_a_room_the_user_is_not_in_counts_as_left_unless_asked() {
    let (hs, store) = setup().await;
    let room = room_id!("!gone:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    hs.mock_leave(room)
        .as_user(ghost)
        .forbidden("User @_test_alice:localhost not in room")
        .expect(2)
        .mount()
        .await;

    let alice = intent(&hs, &store, ghost);
    alice.leave(room).await.unwrap();
    let err = alice.leave(room).raise_not_in_room().await.unwrap_err();
    assert_eq!(err.kind(), Some(&ruma::api::error::ErrorKind::Forbidden));
}

#[tokio::test]
async fn a_join_by_alias_is_retried_while_the_server_cannot_find_the_room() {
    let (hs, store) = setup().await;
    let alias = room_alias_id!("#_test_room:localhost");
    let room = room_id!("!room:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    store.mark_registered(ghost).await.unwrap();
    fetched(&store, room).await;
    let path = format!("/_matrix/client/v3/join/{alias}");
    hs.mock("POST", &path)
        .error(404, "M_UNKNOWN", "No known servers")
        .up_to_n_times(2)
        .expect(2)
        .mount()
        .await;
    hs.mock("POST", &path)
        .as_user(ghost)
        .ok_body(json!({ "room_id": room }))
        .expect(2)
        .mount()
        .await;

    let alice = intent(&hs, &store, ghost);
    assert_eq!(alice.join_room(alias.into()).await.unwrap(), room);
    assert_eq!(store.membership(room, ghost).await.unwrap(), Some(Membership::Join));
    assert!(alice.join_room(alias.into()).max_retries(0).await.is_ok());
}

#[tokio::test]
async fn error_and_leave_can_send_html() {
    let (hs, store) = setup().await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    cache_joined(&store, room, ghost).await;
    hs.mock_send(room, "m.room.message")
        .with_body(json!({
            "msgtype": "m.notice",
            "body": "failed",
            "format": "org.matrix.custom.html",
            "formatted_body": "<b>failed</b>",
        }))
        .expect(1)
        .mount()
        .await;
    hs.mock_leave(room)
        .as_user(ghost)
        .with_body(json!({ "reason": "failed" }))
        .expect(1)
        .mount()
        .await;

    intent(&hs, &store, ghost).error_and_leave(room, "failed").html("<b>failed</b>").await.unwrap();
}

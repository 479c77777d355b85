//! Sends that a crash may have left done but unrecorded.
//!
//! A portal's events are sent one at a time, and an event's records are written while the
//! portal's next event is sent, never later: when the bridge dies, at most two events per portal
//! can have been sent without their mappings written, the first two of that portal that the
//! next life handles. Their sends are repeated with the same transaction IDs, which Synapse
//! answers with the event it has, but only for as long as it remembers them (in memory, for
//! about half an hour, and not across its own restarts). So before repeating a send of such an
//! event, the bridge looks for it in the room: Synapse shows the sender its own events with
//! their `unsigned.transaction_id`.

use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicI64, Ordering},
};

use ruma::{
    OwnedEventId, RoomId,
    api::{
        Direction,
        client::{filter::RoomEventFilter, message::get_message_events},
    },
};
use serde::Deserialize;

use crate::{intent::Intent, portal::RemoteError, remote::PortalKey, util::FastMap};

/// How far back in a room the bridge looks for one of its own sends.
const LOOK_BACK: u32 = 50;

/// How many of a portal's events can have been sent and not recorded at once: the one being
/// recorded, and the next one, sent meanwhile.
pub(super) const UNRECORDED_MAX: usize = 2;

/// Which queued events an earlier life of the bridge may have sent without recording.
#[derive(Debug)]
pub(super) struct Resends {
    /// The first queue position this life made: earlier ones were queued by an earlier life.
    first_of_this_life: AtomicI64,
    /// Each portal's first events handled in this life (tried again when they fail).
    taken: Mutex<FastMap<PortalKey, Vec<i64>>>,
}

impl Default for Resends {
    fn default() -> Self {
        Self { first_of_this_life: AtomicI64::new(i64::MAX), taken: Mutex::default() }
    }
}

impl Resends {
    /// Notes a queue position made by this life.
    pub(super) fn queued(&self, seq: i64) {
        self.first_of_this_life.fetch_min(seq, Ordering::Relaxed);
    }

    /// Whether the event at `seq` is one of its portal's first [`UNRECORDED_MAX`] events
    /// handled in this life and was queued by an earlier one: an earlier life may have sent it
    /// without recording it.
    pub(super) fn may_have_been_sent(&self, seq: i64, portal: &PortalKey) -> bool {
        if seq >= self.first_of_this_life.load(Ordering::Relaxed) {
            return false;
        }
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        let first = match taken.get_mut(portal) {
            Some(first) => first,
            None => taken.entry(portal.clone()).or_default(),
        };
        if first.contains(&seq) {
            return true;
        }
        if first.len() < UNRECORDED_MAX {
            first.push(seq);
            return true;
        }
        false
    }
}

/// The event `intent` sent to `room` with `txn_id`, when it is among the sender's recent events
/// there.
pub(super) async fn sent_before(
    intent: &Intent,
    room: &RoomId,
    txn_id: &str,
) -> Result<Option<OwnedEventId>, RemoteError> {
    #[derive(Deserialize)]
    struct Sent {
        event_id: OwnedEventId,
        #[serde(default)]
        unsigned: Unsigned,
    }
    #[derive(Deserialize, Default)]
    struct Unsigned {
        transaction_id: Option<String>,
    }
    let mut request = get_message_events::v3::Request::new(room.to_owned(), Direction::Backward);
    request.limit = LOOK_BACK.into();
    let mut filter = RoomEventFilter::default();
    filter.senders = Some(vec![intent.user_id().to_owned()]);
    request.filter = filter;
    let page = match intent.send_request(request).await {
        Ok(page) => page,
        // Not in the room (so it sent nothing there), or no such room any more.
        Err(e) if matches!(e.status().map(|s| s.as_u16()), Some(403 | 404)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(page
        .chunk
        .iter()
        .filter_map(|raw| raw.deserialize_as_unchecked::<Sent>().ok())
        .find(|sent| sent.unsigned.transaction_id.as_deref() == Some(txn_id))
        .map(|sent| sent.event_id))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ruma::{room_id, user_id};
    use serde_json::json;

    use super::super::tests::Quiet;
    use crate::{
        Context,
        remote::{PortalKey, RemoteEvent, RemoteSender},
        store::{GhostRow, MemberRow, Membership, PortalRow},
        testing::{MockHomeserver, test_context},
    };

    const ROOM: &str = "!a:localhost";
    const GHOST: &str = "@_test_alice:localhost";

    /// A portal `chat` in `!a`, with remote user alice's ghost in it, and messages `m1`, `m2`
    /// ... (bodies "one", "two" ...) queued by an earlier life of the bridge.
    async fn left_by_an_earlier_life(hs: &MockHomeserver, bodies: &[&str]) -> Context {
        let ctx = test_context(hs, "").await;
        let room = <&ruma::RoomId>::try_from(ROOM).unwrap();
        let ghost = <&ruma::UserId>::try_from(GHOST).unwrap();
        let store = ctx.store();
        let profile = GhostRow {
            remote_id: "alice".into(),
            user_id: ghost.to_owned(),
            displayname: Some("Alice".into()),
            avatar_url: None,
            metadata: None,
        };
        store.upsert_ghost(&profile).await.unwrap();
        store.mark_registered(ghost).await.unwrap();
        store.set_membership(MemberRow::new(room, ghost, Membership::Join)).await.unwrap();
        let key = PortalKey::shared("chat");
        let row = PortalRow {
            key: key.clone(),
            room_id: Some(room.to_owned()),
            name: None,
            topic: None,
            avatar_url: None,
            metadata: None,
        };
        store.upsert_portal(&row).await.unwrap();
        // Queued by the earlier life: straight into the store.
        let alice = RemoteSender::named("alice", "Alice");
        for (n, body) in bodies.iter().enumerate() {
            let id = format!("m{}", n + 1);
            let event = RemoteEvent::text(id.as_str(), alice.clone(), *body);
            let json = serde_json::to_string(&event).unwrap();
            let row = crate::store::NewRemote {
                portal: &key,
                event: json.as_str(),
                message_id: Some(id.as_str()),
            };
            store.enqueue_remote(&[row]).await.unwrap();
        }
        ctx
    }

    /// Runs the pipeline until the queue is empty.
    async fn drain(ctx: &Context) {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(super::super::run(ctx.clone(), Arc::new(Quiet), stop_rx));
        for _ in 0..200 {
            if ctx.store().remote_queue_counts().await.unwrap() == (0, 0) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let _ = stop.send(true);
        assert_eq!(ctx.store().remote_queue_counts().await.unwrap(), (0, 0));
    }

    /// An earlier life queued two messages and sent the first without recording it: this life
    /// finds that send in the room, maps it, and sends only the second (which it looked for
    /// too, as it may have been sent while the first was recorded).
    #[tokio::test]
    async fn the_first_event_an_earlier_life_left_is_looked_for_in_the_room() {
        let hs = MockHomeserver::start().await;
        let ctx = left_by_an_earlier_life(&hs, &["one", "two"]).await;
        let (room, ghost) = (room_id!("!a:localhost"), user_id!("@_test_alice:localhost"));
        let (store, key) = (ctx.store(), PortalKey::shared("chat"));
        let earlier_send = json!({
            "event_id": "$one", "sender": ghost, "type": "m.room.message", "room_id": room,
            "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "one"},
            "unsigned": {"transaction_id": "mxb.q1.0"},
        });
        let other = json!({
            "event_id": "$older", "sender": ghost, "type": "m.room.message", "room_id": room,
            "origin_server_ts": 0, "content": {"msgtype": "m.text", "body": "older"},
            "unsigned": {"transaction_id": "mxb.q0.0"},
        });
        hs.mock("GET", format!("/_matrix/client/v3/rooms/{room}/messages"))
            .as_user(ghost)
            .ok_body(json!({"chunk": [earlier_send, other], "start": "s"}))
            .expect(2)
            .mount()
            .await;
        hs.mock_send(room, "m.room.message").ok_body(json!({"event_id": "$two"})).mount().await;

        drain(&ctx).await;
        assert_eq!(hs.sent_txn_ids(room, "m.room.message").await, ["mxb.q2.0"], "m1 not again");
        let m1 = store.message_parts(&key, &"m1".into()).await.unwrap();
        assert_eq!(m1[0].event_id, "$one", "mapped to the send the room had");
        let m2 = store.message_parts(&key, &"m2".into()).await.unwrap();
        assert_eq!(m2[0].event_id, "$two");
    }

    /// An earlier life recorded neither of the last two messages it sent (one was being
    /// recorded while the next went out): both are found in the room and mapped, the third is
    /// sent, and nothing after the first two is looked for.
    #[tokio::test]
    async fn the_first_two_events_an_earlier_life_left_are_looked_for_in_the_room() {
        let hs = MockHomeserver::start().await;
        let ctx = left_by_an_earlier_life(&hs, &["one", "two", "three", "four"]).await;
        let (room, ghost) = (room_id!("!a:localhost"), user_id!("@_test_alice:localhost"));
        let (store, key) = (ctx.store(), PortalKey::shared("chat"));
        let sent = |event_id: &str, body: &str, txn_id: &str| {
            json!({
                "event_id": event_id, "sender": ghost, "type": "m.room.message", "room_id": room,
                "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": body},
                "unsigned": {"transaction_id": txn_id},
            })
        };
        let chunk = json!([sent("$two", "two", "mxb.q2.0"), sent("$one", "one", "mxb.q1.0")]);
        hs.mock("GET", format!("/_matrix/client/v3/rooms/{room}/messages"))
            .as_user(ghost)
            .ok_body(json!({"chunk": chunk, "start": "s"}))
            .expect(super::UNRECORDED_MAX as u64)
            .mount()
            .await;
        hs.mock_send(room, "m.room.message").ok_body(json!({"event_id": "$new"})).mount().await;

        drain(&ctx).await;
        let sent = hs.sent_txn_ids(room, "m.room.message").await;
        assert_eq!(sent, ["mxb.q3.0", "mxb.q4.0"], "m1 and m2 not again");
        for (id, event_id) in [("m1", "$one"), ("m2", "$two"), ("m3", "$new"), ("m4", "$new")] {
            let mapped = store.message_parts(&key, &id.into()).await.unwrap();
            assert_eq!(mapped[0].event_id, event_id, "{id}");
        }
    }

    /// A ghost that is not in the room sent nothing there: the refused check sends.
    #[tokio::test]
    async fn a_room_the_sender_cannot_read_holds_nothing_it_sent() {
        let hs = MockHomeserver::start().await;
        let ctx = left_by_an_earlier_life(&hs, &["one", "two"]).await;
        let room = room_id!("!a:localhost");
        hs.mock("GET", format!("/_matrix/client/v3/rooms/{room}/messages"))
            .respond(403, json!({"errcode": "M_FORBIDDEN", "error": "not in room"}))
            .expect(2)
            .mount()
            .await;
        hs.mock_send(room, "m.room.message").ok_body(json!({"event_id": "$x"})).mount().await;
        drain(&ctx).await;
        assert_eq!(hs.sent_txn_ids(room, "m.room.message").await, ["mxb.q1.0", "mxb.q2.0"]);
    }
}

//! `PUT /_matrix/app/v1/transactions/{txnId}`
//!
//! The homeserver pushes events in transactions ([spec]). A transaction is answered 200 only after
//! its events are committed to the inbox in one database transaction; the bridge handles them
//! afterwards. Ephemeral data (typing, receipts, presence, to-device, MSC3202 device data) is not
//! stored: it is queued in memory for the bridge once the commit succeeded.
//!
//! [spec]: https://spec.matrix.org/v1.19/application-service-api/#put_matrixappv1transactionstxnid

use std::{borrow::Cow, sync::Arc};

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
};
use ruma::{EventId, RoomId, UserId};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ServerState, auth::HsAuthed, error::ApiError, error::json_error};
use crate::{
    bridge::{Bridge, DeviceData, EphemeralEvent, Event, MalformedEvent, ToDeviceEvent},
    store::{AcceptOutcome, NewEvent},
};

/// The body of a transaction, borrowed from the request bytes. Events stay raw.
#[derive(Deserialize)]
pub(crate) struct TransactionBody<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    ephemeral: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default, rename = "de.sorunome.msc2409.ephemeral")]
    ephemeral_unstable: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    to_device: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default, rename = "de.sorunome.msc2409.to_device")]
    to_device_unstable: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    device_lists: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "org.matrix.msc3202.device_lists")]
    device_lists_unstable: Option<&'a RawValue>,
    #[serde(borrow, default)]
    device_one_time_keys_count: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "org.matrix.msc3202.device_one_time_keys_count")]
    otk_count_unstable: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "org.matrix.msc3202.device_one_time_key_counts")]
    otk_counts_unstable: Option<&'a RawValue>,
    #[serde(borrow, default)]
    device_unused_fallback_key_types: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "org.matrix.msc3202.device_unused_fallback_key_types")]
    fallback_unstable: Option<&'a RawValue>,
}

/// The fields of an event the inbox needs before the bridge sees it.
#[derive(Deserialize)]
pub(crate) struct Envelope<'a> {
    #[serde(borrow)]
    pub(crate) event_id: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) room_id: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) sender: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    pub(crate) kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) state_key: Option<Cow<'a, str>>,
    /// Kept as a slice (skipped all the same), so the content can be read without the rest.
    #[serde(borrow, default)]
    pub(crate) content: Option<&'a RawValue>,
}

impl Envelope<'_> {
    /// Checks the IDs (without copying them), refusing events a homeserver would never send.
    pub(crate) fn validate(&self) -> Result<(&EventId, &RoomId, &UserId), MalformedEvent> {
        let event_id = <&EventId>::try_from(self.event_id.as_ref())
            .map_err(|e| MalformedEvent(format!("bad event_id: {e}")))?;
        let room_id = <&RoomId>::try_from(self.room_id.as_ref())
            .map_err(|e| MalformedEvent(format!("bad room_id: {e}")))?;
        let sender = <&UserId>::try_from(self.sender.as_ref())
            .map_err(|e| MalformedEvent(format!("bad sender: {e}")))?;
        if self.kind.is_empty() {
            return Err(MalformedEvent("empty type".into()));
        }
        // Parsers allow some IDs with control characters; PostgreSQL cannot store a NUL in
        // TEXT, and one such event must not fail the transaction (the homeserver would resend
        // it forever).
        for (field, value) in [
            ("event_id", &self.event_id),
            ("room_id", &self.room_id),
            ("sender", &self.sender),
            ("type", &self.kind),
        ] {
            if has_control(value) {
                return Err(MalformedEvent(format!("control character in {field}")));
            }
        }
        // The spec caps IDs at 255 bytes; ruma checks that for user IDs only. A longer event
        // ID overflows PostgreSQL's unique index (2704 bytes), failing the whole transaction.
        for (field, value) in [("event_id", &self.event_id), ("room_id", &self.room_id)] {
            if value.len() > 255 {
                return Err(MalformedEvent(format!("{field} longer than 255 bytes")));
            }
        }
        Ok((event_id, room_id, sender))
    }
}

/// Whether `s` holds a control character (C0, DEL or C1). IDs are printable ASCII in practice,
/// which one branch-free pass over the bytes confirms; anything else is decoded.
fn has_control(s: &str) -> bool {
    let printable_ascii = !s.bytes().fold(false, |out, b| out | !(0x20..0x7f).contains(&b));
    !printable_ascii && s.chars().any(char::is_control)
}

/// The dedup hash of a transaction: 128-bit FNV-1a. It only has to tell a homeserver's retry
/// of a transaction from a reused txn ID carrying other events (the homeserver is
/// authenticated, so nobody is looking for collisions); SHA-256 cost ~1,000 instructions per
/// event here, this about a quarter of that.
struct DedupHash(u128);

impl DedupHash {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

    fn new() -> Self {
        Self(Self::OFFSET)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u128::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// In-memory data of one transaction, handed to the bridge after the commit.
#[derive(Debug, Default)]
pub(crate) struct EphemeralBatch {
    pub(crate) ephemeral: Vec<EphemeralEvent>,
    pub(crate) to_device: Vec<ToDeviceEvent>,
    pub(crate) device_data: DeviceData,
}

impl EphemeralBatch {
    fn is_empty(&self) -> bool {
        self.ephemeral.is_empty() && self.to_device.is_empty() && self.device_data.is_empty()
    }
}

/// A parsed transaction, ready to store.
pub(crate) struct ParsedTransaction<'a> {
    /// Events with a valid envelope, in the order received.
    pub(crate) events: Vec<NewEvent<'a>>,
    /// The same events, parsed for the dispatcher (handed over after the commit, so it does
    /// not parse them again).
    pub(crate) parsed: Vec<Event>,
    /// Events refused with the reason (logged and skipped).
    pub(crate) rejected: Vec<(Option<String>, String)>,
    /// The dedup hash: event IDs and ephemeral data (not the event bodies, which carry an `age`
    /// that changes when Synapse resends a transaction).
    pub(crate) hash: String,
    pub(crate) batch: EphemeralBatch,
}

/// Parses a transaction body. One malformed event never fails the batch.
///
/// # Errors
/// `M_NOT_JSON` when the body is not JSON, `M_BAD_JSON` when it is not a transaction.
pub(crate) fn parse(body: &[u8]) -> Result<ParsedTransaction<'_>, ApiError> {
    // serde's derived structs also accept a JSON array of the fields in order.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::bad_json("A transaction must be a JSON object"));
    }
    // Checked as UTF-8 once, the whole body: parsed from bytes, serde_json would check each
    // event's raw JSON again.
    let body = std::str::from_utf8(body)
        .map_err(|e| ApiError::not_json(format!("Request body is not valid JSON: {e}")))?;
    let body: TransactionBody<'_> = serde_json::from_str(body).map_err(|e| json_error(&e))?;
    let mut events = Vec::with_capacity(body.events.len());
    let mut parsed = Vec::with_capacity(body.events.len());
    let mut rejected = Vec::new();
    let mut ctx = DedupHash::new();
    for raw in &body.events {
        match serde_json::from_str::<Envelope<'_>>(raw.get()) {
            Ok(env) => match env.validate() {
                Ok(ids) => {
                    parsed.push(Event::from_validated(ids, &env, raw));
                    ctx.update(env.event_id.as_bytes());
                    ctx.update(b"\n");
                    events.push(NewEvent {
                        event_id: env.event_id,
                        room_id: env.room_id,
                        json: raw.get(),
                    });
                }
                Err(e) => rejected.push((Some(env.event_id.into_owned()), e.0)),
            },
            Err(e) => {
                let id = serde_json::from_str::<serde_json::Value>(raw.get())
                    .ok()
                    .and_then(|v| v.get("event_id").and_then(|i| i.as_str()).map(str::to_owned));
                rejected.push((id, format!("bad event envelope: {e}")));
            }
        }
    }
    // Synapse sends ephemeral data and to-device messages under both names with the same
    // content: take the stable list when there is one, never both.
    let ephemeral = pick(body.ephemeral, body.ephemeral_unstable);
    let to_device = pick(body.to_device, body.to_device_unstable);
    let device_lists = body.device_lists.or(body.device_lists_unstable);
    let otk =
        body.device_one_time_keys_count.or(body.otk_count_unstable).or(body.otk_counts_unstable);
    let fallback = body.device_unused_fallback_key_types.or(body.fallback_unstable);
    ctx.update(b"\0");
    for raw in ephemeral.iter().chain(&to_device) {
        ctx.update(raw.get().as_bytes());
        ctx.update(b"\n");
    }
    for raw in [device_lists, otk, fallback].into_iter().flatten() {
        ctx.update(raw.get().as_bytes());
    }
    let hash = ctx.hex();
    let batch = EphemeralBatch {
        ephemeral: ephemeral.into_iter().filter_map(ephemeral_event).collect(),
        to_device: to_device.into_iter().filter_map(to_device_event).collect(),
        device_data: DeviceData {
            device_lists: device_lists.filter(|r| !is_empty_json(r)).map(boxed),
            one_time_key_counts: otk.filter(|r| !is_empty_json(r)).map(boxed),
            unused_fallback_key_types: fallback.filter(|r| !is_empty_json(r)).map(boxed),
        },
    };
    Ok(ParsedTransaction { events, parsed, rejected, hash, batch })
}

fn pick<T>(stable: Option<Vec<T>>, unstable: Option<Vec<T>>) -> Vec<T> {
    match stable {
        Some(v) if !v.is_empty() => v,
        _ => unstable.unwrap_or_default(),
    }
}

fn boxed(raw: &RawValue) -> Box<RawValue> {
    raw.to_owned()
}

fn is_empty_json(raw: &RawValue) -> bool {
    matches!(raw.get().trim(), "{}" | "[]" | "null")
}

#[derive(Deserialize)]
struct EduHeader<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    room_id: Option<Cow<'a, str>>,
}

fn ephemeral_event(raw: &RawValue) -> Option<EphemeralEvent> {
    match serde_json::from_str::<EduHeader<'_>>(raw.get()) {
        Ok(h) => Some(EphemeralEvent {
            kind: h.kind.into_owned(),
            room_id: h.room_id.and_then(|r| RoomId::parse(r.as_ref()).ok()),
            json: raw.to_owned(),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "skipping malformed ephemeral event");
            None
        }
    }
}

fn to_device_event(raw: &RawValue) -> Option<ToDeviceEvent> {
    match serde_json::from_str::<EduHeader<'_>>(raw.get()) {
        Ok(h) => Some(ToDeviceEvent { kind: h.kind.into_owned(), json: raw.to_owned() }),
        Err(e) => {
            tracing::warn!(error = %e, "skipping malformed to-device event");
            None
        }
    }
}

/// # `PUT /_matrix/app/v1/transactions/{txnId}`
///
/// Stores the events durably, then answers `{}`.
pub(crate) async fn push_events<B: Bridge>(
    _: HsAuthed,
    State(state): State<Arc<ServerState<B>>>,
    Path(txn_id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    if txn_id.chars().any(char::is_control) {
        return Err(ApiError::invalid_param("Control character in the transaction ID"));
    }
    let span = tracing::info_span!("txn", %txn_id, events = tracing::field::Empty);
    let _enter = span.enter();
    let mut parsed = parse(&body)?;
    span.record("events", parsed.events.len());
    for (event_id, reason) in &parsed.rejected {
        tracing::warn!(event_id = event_id.as_deref().unwrap_or("?"), %reason, "skipping malformed event");
    }
    drop(_enter);
    let outcome = state
        .group_commit
        .store(
            state.ctx.store(),
            &txn_id,
            &parsed.hash,
            &body,
            &parsed.events,
            std::mem::take(&mut parsed.parsed),
        )
        .await
        .map_err(|e| {
            tracing::error!(parent: &span, error = %e, "could not store transaction");
            state.ctx.metrics().transaction("error", parsed.events.len());
            ApiError::internal()
        })?;
    match outcome {
        AcceptOutcome::Duplicate => {
            state.ctx.metrics().transaction("duplicate", parsed.events.len());
            tracing::debug!(parent: &span, "duplicate transaction");
        }
        AcceptOutcome::Stored { new_events } => {
            state.ctx.metrics().transaction("stored", parsed.events.len());
            tracing::debug!(parent: &span, new_events, "transaction stored");
            if !parsed.batch.is_empty() {
                state.inbox.queue_ephemeral(parsed.batch).await;
            }
        }
    }
    Ok(Json(serde_json::json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dedup_hash_is_fnv1a_128() {
        // The published FNV-1a 128 values of "" and "a", and one computed apart.
        for (input, expected) in [
            ("", "6c62272e07bb014262b821756295c58d"),
            ("a", "d228cb696f1a8caf78912b704e4a8964"),
            ("foobar", "343e1662793c64bf6f0d3597ba446f18"),
        ] {
            let mut h = DedupHash::new();
            h.update(input.as_bytes());
            assert_eq!(h.hex(), expected, "{input:?}");
        }
    }

    #[test]
    fn control_characters_are_found_in_ascii_and_beyond() {
        for s in ["a\u{0}b", "\t", "x\u{7f}", "é\u{85}", "\u{9f}"] {
            assert!(has_control(s), "{s:?}");
        }
        for s in ["", "$abc:x.org", "@ü:x", "!日本:x", "\u{a0}"] {
            assert!(!has_control(s), "{s:?}");
        }
    }

    #[test]
    fn one_malformed_event_does_not_fail_the_batch() {
        let body = br#"{"events":[
            {"event_id":"$a","room_id":"!r:x","sender":"@u:x","type":"m.room.message","content":{}},
            {"event_id":"$b","room_id":"not-a-room","sender":"@u:x","type":"m.room.message"},
            {"room_id":"!r:x"},
            {"event_id":"$c","room_id":"!r:x","sender":"@u:x","type":"m.room.message","content":{}}
        ]}"#;
        let p = parse(body).unwrap();
        let ids: Vec<_> = p.events.iter().map(|e| e.event_id.as_ref()).collect();
        assert_eq!(ids, ["$a", "$c"]);
        assert_eq!(p.rejected.len(), 2);
        assert_eq!(p.rejected[0].0.as_deref(), Some("$b"));
    }

    #[test]
    fn ephemeral_under_both_names_is_taken_once() {
        let edu = r#"{"type":"m.typing","room_id":"!r:x","content":{"user_ids":[]}}"#;
        let body = format!(
            r#"{{"events":[],"ephemeral":[{edu}],"de.sorunome.msc2409.ephemeral":[{edu}],
               "de.sorunome.msc2409.to_device":[{{"type":"m.x","sender":"@a:x","content":{{}}}}],
               "org.matrix.msc3202.device_one_time_key_counts":{{"@g:x":{{"DEV":{{"signed_curve25519":3}}}}}},
               "org.matrix.msc3202.device_unused_fallback_key_types":{{"@g:x":{{"DEV":[]}}}}}}"#
        );
        let p = parse(body.as_bytes()).unwrap();
        assert_eq!(p.batch.ephemeral.len(), 1);
        assert_eq!(p.batch.ephemeral[0].kind, "m.typing");
        assert_eq!(p.batch.to_device.len(), 1);
        assert!(p.batch.device_data.one_time_key_counts.is_some());
        assert!(p.batch.device_data.unused_fallback_key_types.is_some());
    }

    #[test]
    fn hash_ignores_event_age_but_not_event_ids_or_ephemeral_data() {
        let a = br#"{"events":[{"event_id":"$a","room_id":"!r:x","sender":"@u:x","type":"t","unsigned":{"age":1}}]}"#;
        let b = br#"{"events":[{"event_id":"$a","room_id":"!r:x","sender":"@u:x","type":"t","unsigned":{"age":9}}]}"#;
        let c = br#"{"events":[{"event_id":"$c","room_id":"!r:x","sender":"@u:x","type":"t"}]}"#;
        let d = br#"{"events":[],"ephemeral":[{"type":"m.typing","room_id":"!r:x","content":{}}]}"#;
        let e = br#"{"events":[]}"#;
        assert_eq!(parse(a).unwrap().hash, parse(b).unwrap().hash);
        assert_ne!(parse(a).unwrap().hash, parse(c).unwrap().hash);
        assert_ne!(parse(d).unwrap().hash, parse(e).unwrap().hash);
    }

    #[test]
    fn ids_with_control_characters_are_skipped_not_stored() {
        let body = br#"{"events":[
            {"event_id":"$a\u0000b","room_id":"!r:x","sender":"@u:x","type":"t"},
            {"event_id":"$c","room_id":"!r\u0000:x","sender":"@u:x","type":"t"},
            {"event_id":"$d","room_id":"!r:x","sender":"@u\u0001:x","type":"t"},
            {"event_id":"$e","room_id":"!r:x","sender":"@u:x","type":"m.\u0000"},
            {"event_id":"$ok","room_id":"!r:x","sender":"@u:x","type":"t","content":{"b":"\u0000"}}
        ]}"#;
        let p = parse(body).unwrap();
        let ids: Vec<_> = p.events.iter().map(|e| e.event_id.as_ref()).collect();
        assert_eq!(ids, ["$ok"]);
        assert_eq!(p.rejected.len(), 4);
    }

    #[test]
    fn ids_over_255_bytes_are_skipped_not_stored() {
        let long = "a".repeat(300);
        let body = format!(
            r#"{{"events":[
            {{"event_id":"${long}","room_id":"!r:x","sender":"@u:x","type":"t"}},
            {{"event_id":"$b","room_id":"!{long}:x","sender":"@u:x","type":"t"}},
            {{"event_id":"${}","room_id":"!r:x","sender":"@u:x","type":"t"}}
        ]}}"#,
            "a".repeat(254)
        );
        let p = parse(body.as_bytes()).unwrap();
        assert_eq!((p.events.len(), p.rejected.len()), (1, 2));
    }

    #[test]
    fn a_json_array_is_not_a_transaction() {
        let ev = r#"{"event_id":"$a","room_id":"!r:x","sender":"@u:x","type":"t"}"#;
        assert_eq!(parse(format!("[[{ev}]]").as_bytes()).err().unwrap().errcode, "M_BAD_JSON");
        assert_eq!(parse(b" \n[]").err().unwrap().errcode, "M_BAD_JSON");
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse(deep.as_bytes()).err().unwrap().errcode, "M_BAD_JSON");
    }

    #[test]
    fn deep_nesting_in_content_is_kept_raw_and_fails_cleanly_when_read() {
        // A homeserver's event is stored as sent (refusing the transaction would stall the
        // homeserver); serde_json's recursion limit makes reading the content an error, not a
        // stack overflow, in the dispatcher and in the bridge.
        for depth in [200, 100_000] {
            let body = format!(
                r#"{{"events":[{{"event_id":"$a","room_id":"!r:x","sender":"@u:x","type":"m.room.member","state_key":"@u:x","content":{}1{}}}]}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            let p = parse(body.as_bytes()).unwrap();
            assert_eq!(p.events.len(), 1, "depth {depth}");
            let event = crate::bridge::Event::from_json(p.events[0].json).unwrap();
            assert!(event.content::<serde_json::Value>().is_err(), "depth {depth}");
        }
    }

    #[test]
    fn not_json_and_bad_json_are_told_apart() {
        assert_eq!(parse(b"{nope").err().unwrap().errcode, "M_NOT_JSON");
        assert_eq!(parse(b"{\"events\": 5}").err().unwrap().errcode, "M_BAD_JSON");
        assert_eq!(parse(b"{}").err().unwrap().errcode, "M_BAD_JSON");
        assert_eq!(parse(b"[]").err().unwrap().errcode, "M_BAD_JSON");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::parse;

        /// Any JSON value, a few levels deep, with strings from the whole of Unicode.
        fn json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                ".*".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                    prop::collection::btree_map(".*", inner, 0..6)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// An ID: usually well formed, sometimes anything at all.
        fn id(sigil: char) -> impl Strategy<Value = serde_json::Value> {
            prop_oneof![
                4 => "[a-zA-Z0-9]{1,12}".prop_map(move |l| format!("{sigil}{l}:localhost").into()),
                1 => ".*".prop_map(serde_json::Value::from),
                1 => json(),
            ]
        }

        fn event() -> impl Strategy<Value = serde_json::Value> {
            (id('$'), id('!'), id('@'), prop_oneof![3 => Just("m.t".into()), 1 => json()], json())
                .prop_map(|(event_id, room_id, sender, kind, content)| {
                    serde_json::json!({
                        "event_id": event_id, "room_id": room_id, "sender": sender,
                        "type": kind, "content": content,
                    })
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Arbitrary bytes: an error or a transaction, never a panic.
            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse(&body);
            }

            /// Arbitrary JSON at the top level or in place of the events.
            #[test]
            fn arbitrary_json_never_panics(v in json(), events in json()) {
                let _ = parse(v.to_string().as_bytes());
                let body = serde_json::json!({ "events": events, "ephemeral": v });
                let _ = parse(body.to_string().as_bytes());
            }

            /// Every event is either accepted with a storable envelope or rejected; order is
            /// kept; the hash depends only on the accepted event IDs (and ephemeral data).
            #[test]
            fn events_are_accepted_or_rejected_never_lost(events in prop::collection::vec(event(), 0..12)) {
                let body = serde_json::json!({ "events": events }).to_string();
                let p = parse(body.as_bytes()).unwrap();
                prop_assert_eq!(p.events.len() + p.rejected.len(), events.len());
                let mut last = 0;
                for e in &p.events {
                    let pos = events
                        .iter()
                        .skip(last)
                        .position(|v| v["event_id"].as_str() == Some(e.event_id.as_ref()))
                        .expect("an accepted event was sent");
                    last += pos + 1;
                    prop_assert!(!e.event_id.chars().any(char::is_control));
                    prop_assert!(!e.room_id.chars().any(char::is_control));
                    prop_assert!(ruma::EventId::parse(e.event_id.as_ref()).is_ok());
                    prop_assert!(ruma::RoomId::parse(e.room_id.as_ref()).is_ok());
                    let stored: serde_json::Value = serde_json::from_str(e.json).unwrap();
                    prop_assert_eq!(stored["event_id"].as_str(), Some(e.event_id.as_ref()));
                }
                // Adding an `age` to every event does not change the dedup hash.
                let aged: Vec<_> = events
                    .iter()
                    .map(|e| {
                        let mut e = e.clone();
                        e["unsigned"] = serde_json::json!({"age": 1234});
                        e
                    })
                    .collect();
                let aged = serde_json::json!({ "events": aged }).to_string();
                prop_assert_eq!(parse(aged.as_bytes()).unwrap().hash, p.hash);
            }
        }
    }
}

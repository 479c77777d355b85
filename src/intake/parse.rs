//! Reading a transaction body: events with a valid envelope, the ones refused and why, the
//! ephemeral data, and the dedup hash. One malformed event never fails the transaction.

use std::borrow::Cow;

use ruma::RoomId;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{
    event::{DeviceData, Envelope, EphemeralBatch, EphemeralEvent, Event, ToDeviceEvent},
    store::NewEvent,
};

/// Why a transaction body was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadTransaction {
    /// Not JSON at all (`M_NOT_JSON`).
    #[error("{0}")]
    NotJson(String),
    /// JSON of the wrong shape (`M_BAD_JSON`).
    #[error("{0}")]
    BadJson(String),
}

impl BadTransaction {
    /// The Matrix errcode it is answered with.
    pub(crate) fn errcode(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "M_NOT_JSON",
            Self::BadJson(_) => "M_BAD_JSON",
        }
    }

    fn from_json(e: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                Self::NotJson(format!("Request body is not valid JSON: {e}"))
            }
            Category::Data => Self::BadJson(format!("Request body has the wrong shape: {e}")),
        }
    }
}

/// The body of a transaction, borrowed from the request's text. Events stay raw (`E` is
/// `&RawValue`), or are read in the same pass ([`Located`]).
#[derive(Deserialize)]
#[serde(bound(deserialize = "E: Deserialize<'de>"))]
pub(crate) struct TransactionBody<'a, E> {
    events: Vec<E>,
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

/// An event read in the body's one pass: its envelope, and where it lies in the body (from its
/// first key to the end of its last value). Only the common form is read this way: every key
/// and every ID field is a plain JSON string (no escapes), no envelope field comes twice, and
/// the event is a non-empty object. Anything else fails the pass, and the body is read again the
/// general way ([`parse_general`]), which handles (or rejects) each event on its own.
pub(crate) struct Located<'a> {
    envelope: Envelope<'a>,
    first_key: &'a str,
    /// Where the last value ends (an address in the body).
    end: usize,
}

impl<'de> Deserialize<'de> for Located<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(LocatedVisitor)
    }
}

struct LocatedVisitor;

/// Where a borrowed JSON string's closing quote ends: a borrowed string has no escapes, so its
/// closing quote follows it.
fn after_string(s: &str) -> usize {
    s.as_ptr() as usize + s.len() + 1
}

/// Where a raw value ends.
fn after_raw(raw: &RawValue) -> usize {
    raw.get().as_ptr() as usize + raw.get().len()
}

impl<'de> serde::de::Visitor<'de> for LocatedVisitor {
    type Value = Located<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event object with plain keys and IDs")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Located<'de>, A::Error> {
        use serde::de::Error as _;
        let mut first_key = None;
        let mut end = 0;
        let (mut event_id, mut room_id, mut sender, mut kind) = (None, None, None, None);
        let mut state_key: Option<Option<&'de str>> = None;
        let mut content: Option<Option<&'de RawValue>> = None;
        fn once<T, E: serde::de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
            if slot.replace(value).is_some() {
                return Err(E::custom("a field comes twice"));
            }
            Ok(())
        }
        while let Some(key) = map.next_key::<&'de str>()? {
            first_key.get_or_insert(key);
            let field = match key {
                "event_id" => &mut event_id,
                "room_id" => &mut room_id,
                "sender" => &mut sender,
                "type" => &mut kind,
                "state_key" => {
                    let raw: &'de RawValue = map.next_value()?;
                    end = after_raw(raw);
                    let value = match raw.get() {
                        "null" => None,
                        s => Some(serde_json::from_str::<&'de str>(s).map_err(A::Error::custom)?),
                    };
                    once(&mut state_key, value)?;
                    continue;
                }
                _ => {
                    let raw: &'de RawValue = map.next_value()?;
                    end = after_raw(raw);
                    if key == "content" {
                        // As `Option<&RawValue>` reads it: `null` is no content.
                        once(&mut content, Some(raw).filter(|r| r.get() != "null"))?;
                    }
                    continue;
                }
            };
            let value: &'de str = map.next_value()?;
            end = after_string(value);
            once(field, value)?;
        }
        let first_key = first_key.ok_or_else(|| A::Error::custom("an empty event"))?;
        let missing = |name| A::Error::custom(format_args!("missing `{name}`"));
        Ok(Located {
            envelope: Envelope {
                event_id: Cow::Borrowed(event_id.ok_or_else(|| missing("event_id"))?),
                room_id: Cow::Borrowed(room_id.ok_or_else(|| missing("room_id"))?),
                sender: Cow::Borrowed(sender.ok_or_else(|| missing("sender"))?),
                kind: Cow::Borrowed(kind.ok_or_else(|| missing("type"))?),
                state_key: state_key.flatten().map(Cow::Borrowed),
                content: content.flatten(),
            },
            first_key,
            end,
        })
    }
}

impl<'a> Located<'a> {
    /// The event's JSON: from the `{` before its first key to the `}` after its last value.
    fn json_in(&self, body: &'a str) -> Option<&'a str> {
        let bytes = body.as_bytes();
        let key_quote =
            crate::util::range_in(bytes, self.first_key.as_bytes())?.start.checked_sub(1)?;
        let end = self.end.checked_sub(body.as_ptr() as usize)?;
        let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let open =
            key_quote - bytes.get(..key_quote)?.iter().rev().take_while(|b| is_space(b)).count();
        let close = end + bytes.get(end..)?.iter().take_while(|b| is_space(b)).count();
        let framed = bytes.get(key_quote) == Some(&b'"')
            && open > 0
            && bytes[open - 1] == b'{'
            && bytes.get(close) == Some(&b'}');
        framed.then(|| body.get(open - 1..=close)).flatten()
    }
}

/// The dedup hash of a transaction: 128-bit FNV-1a. It only has to tell a homeserver's retry
/// of a transaction from a reused txn ID carrying other events (the homeserver is
/// authenticated, so nobody is looking for collisions), and costs a fraction of SHA-256.
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

/// [`parse_text`] for a body of bytes (tests, fuzzing): `M_NOT_JSON` when it is not UTF-8.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn parse(body: &[u8]) -> Result<ParsedTransaction<'_>, BadTransaction> {
    parse_text(std::str::from_utf8(body).map_err(not_utf8)?)
}

pub(crate) fn not_utf8(e: std::str::Utf8Error) -> BadTransaction {
    BadTransaction::NotJson(format!("Request body is not valid JSON: {e}"))
}

/// Parses a transaction body that was checked as UTF-8 once, as a whole (parsed from bytes,
/// serde_json would check each event's raw JSON again, and the group commit each slice of it).
/// One malformed event never fails the batch.
///
/// # Errors
/// `M_BAD_JSON` when the body is not a transaction, `M_NOT_JSON` when it is not JSON.
pub(crate) fn parse_text(body: &str) -> Result<ParsedTransaction<'_>, BadTransaction> {
    // serde's derived structs also accept a JSON array of the fields in order.
    if body.bytes().find(|b| !b.is_ascii_whitespace()) == Some(b'[') {
        return Err(BadTransaction::BadJson("A transaction must be a JSON object".into()));
    }
    // One pass for the common form (see `Located`); the general way when it fails.
    match parse_one_pass(body) {
        Some(parsed) => Ok(parsed),
        None => parse_general(body),
    }
}

/// Reads the body in one pass, if every event has the common form (see [`Located`]).
fn parse_one_pass(body: &str) -> Option<ParsedTransaction<'_>> {
    let mut fast = serde_json::from_str::<TransactionBody<'_, Located<'_>>>(body).ok()?;
    let read = std::mem::take(&mut fast.events)
        .into_iter()
        .map(|located| {
            let json = located.json_in(body)?;
            Some(Ok((located.envelope, json)))
        })
        .collect::<Option<Vec<ReadEvent<'_>>>>()?;
    Some(finish(fast, read))
}

/// Reads the body the general way: each event as raw JSON, then its envelope.
fn parse_general(body: &str) -> Result<ParsedTransaction<'_>, BadTransaction> {
    let slow: TransactionBody<'_, &RawValue> =
        serde_json::from_str(body).map_err(|e| BadTransaction::from_json(&e))?;
    let read = slow
        .events
        .iter()
        .map(|raw| match serde_json::from_str::<Envelope<'_>>(raw.get()) {
            Ok(env) => Ok((env, raw.get())),
            Err(e) => {
                let id = serde_json::from_str::<serde_json::Value>(raw.get())
                    .ok()
                    .and_then(|v| v.get("event_id").and_then(|i| i.as_str()).map(str::to_owned));
                Err((id, format!("bad event envelope: {e}")))
            }
        })
        .collect();
    Ok(finish(slow, read))
}

/// An event's envelope and JSON, or why it was refused (with its event ID if it has one).
type ReadEvent<'a> = Result<(Envelope<'a>, &'a str), (Option<String>, String)>;

/// Validates the events read from `body` and gathers the rest of the transaction.
fn finish<'a, E>(body: TransactionBody<'a, E>, read: Vec<ReadEvent<'a>>) -> ParsedTransaction<'a> {
    let mut events = Vec::with_capacity(read.len());
    let mut parsed = Vec::with_capacity(read.len());
    let mut rejected = Vec::new();
    let mut ctx = DedupHash::new();
    for item in read {
        match item {
            Ok((env, json)) => match env.validate() {
                Ok(ids) => {
                    parsed.push(Event::from_validated(ids, &env, json));
                    ctx.update(env.event_id.as_bytes());
                    ctx.update(b"\n");
                    events.push(NewEvent { event_id: env.event_id, room_id: env.room_id, json });
                }
                Err(e) => rejected.push((Some(env.event_id.into_owned()), e.0)),
            },
            Err(refused) => rejected.push(refused),
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
    ParsedTransaction { events, parsed, rejected, hash, batch }
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
               "org.matrix.msc3202.device_one_time_key_counts":
                   {{"@g:x":{{"DEV":{{"signed_curve25519":3}}}}}},
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
        let a = concat!(
            r#"{"events":[{"event_id":"$a","room_id":"!r:x","sender":"@u:x","ty"#,
            r#"pe":"t","unsigned":{"age":1}}]}"#,
        )
        .as_bytes();
        let b = concat!(
            r#"{"events":[{"event_id":"$a","room_id":"!r:x","sender":"@u:x","ty"#,
            r#"pe":"t","unsigned":{"age":9}}]}"#,
        )
        .as_bytes();
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
        assert_eq!(parse(format!("[[{ev}]]").as_bytes()).err().unwrap().errcode(), "M_BAD_JSON");
        assert_eq!(parse(b" \n[]").err().unwrap().errcode(), "M_BAD_JSON");
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse(deep.as_bytes()).err().unwrap().errcode(), "M_BAD_JSON");
    }

    #[test]
    fn deep_nesting_in_content_is_kept_raw_and_fails_cleanly_when_read() {
        // A homeserver's event is stored as sent (refusing the transaction would stall the
        // homeserver); serde_json's recursion limit makes reading the content an error, not a
        // stack overflow, in the dispatcher and in the bridge.
        for depth in [200, 100_000] {
            let body = format!(
                concat!(
                    r#"{{"events":[{{"event_id":"$a","room_id":"!r:x","sender":"@u:x",""#,
                    r#"type":"m.room.member","state_key":"@u:x","content":{}1{}}}]}}"#,
                ),
                "[".repeat(depth),
                "]".repeat(depth)
            );
            let p = parse(body.as_bytes()).unwrap();
            assert_eq!(p.events.len(), 1, "depth {depth}");
            let event = crate::event::Event::from_json(p.events[0].json).unwrap();
            assert!(event.content::<serde_json::Value>().is_err(), "depth {depth}");
        }
    }

    #[test]
    fn not_json_and_bad_json_are_told_apart() {
        assert_eq!(parse(b"{nope").err().unwrap().errcode(), "M_NOT_JSON");
        assert_eq!(parse(b"{\"events\": 5}").err().unwrap().errcode(), "M_BAD_JSON");
        assert_eq!(parse(b"{}").err().unwrap().errcode(), "M_BAD_JSON");
        assert_eq!(parse(b"[]").err().unwrap().errcode(), "M_BAD_JSON");
    }

    /// What a parse found, comparable: accepted events (ID, room, JSON, content span, state
    /// key), refusals, hash, ephemeral counts.
    type Seen = (
        Vec<(String, String, String, Option<String>, Option<String>)>,
        Vec<(Option<String>, String)>,
        String,
        usize,
    );

    fn seen(p: &ParsedTransaction<'_>) -> Seen {
        let events = p
            .events
            .iter()
            .zip(&p.parsed)
            .map(|(e, ev)| {
                assert_eq!(e.json, ev.json());
                (
                    e.event_id.to_string(),
                    e.room_id.to_string(),
                    e.json.to_owned(),
                    ev.content_json().map(str::to_owned),
                    ev.state_key.clone(),
                )
            })
            .collect();
        (events, p.rejected.clone(), p.hash.clone(), p.batch.ephemeral.len())
    }

    /// The one pass reads what the general way reads, whenever it reads a body at all.
    fn same_as_general(body: &str) -> bool {
        let general = parse_general(body).map(|p| seen(&p));
        match parse_one_pass(body) {
            Some(p) => {
                assert_eq!(Ok(seen(&p)), general.map_err(|e| e.errcode()), "{body}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn the_one_pass_reads_the_common_form_as_the_general_way_does() {
        let common = [
            concat!(
                r#"{"events":[{"event_id":"$a","room_id":"!r:x","sender":"@u:x","ty"#,
                r#"pe":"m.room.message","content":{"body":"\"hi\" \u00e9"},"origin_"#,
                r#"server_ts":1,"unsigned":{"age":3}}]}"#,
            ),
            // Whitespace everywhere, the envelope last, a state event, null content.
            concat!(
                "{ \"events\" : [ { \"content\" : null ,\n\t\"state_key\" : \"@u:x\" , ",
                "\"type\":\"m.room.member\",\r\n \"sender\" : \"@u:x\", \"room_id\":\"!r:x\" ",
                ", \"event_id\" : \"$b\" } , {\"event_id\":\"$c\",\"room_id\":\"!r:x\",",
                "\"sender\":\"@u:x\",\"type\":\"t\",\"state_key\":null,",
                "\"origin_server_ts\": 17 } ] , \"ephemeral\": [] }",
            ),
            // Events refused by validation still take the one pass.
            concat!(
                r#"{"events":[{"event_id":"$a","room_id":"not-a-room","sender":"@u:"#,
                r#"x","type":"t"},{"event_id":"$b","room_id":"!r:x","sender":"@u:x""#,
                r#","type":""}]}"#,
            ),
            r#"{"events":[]}"#,
        ];
        for body in common {
            assert!(same_as_general(body), "the one pass gave up on {body}");
        }
        let unusual = [
            // An escaped ID or key, a field twice, a missing field, a wrong type, an empty
            // event, an array where an event should be.
            r#"{"events":[{"event_id":"\u0024a","room_id":"!r:x","sender":"@u:x","type":"t"}]}"#,
            r#"{"events":[{"\u0065vent_id":"$a","room_id":"!r:x","sender":"@u:x","type":"t"}]}"#,
            concat!(
                r#"{"events":[{"event_id":"$a","event_id":"$b","room_id":"!r:x","se"#,
                r#"nder":"@u:x","type":"t"}]}"#,
            ),
            concat!(
                r#"{"events":[{"event_id":"$a","room_id":"!r:x","sender":"@u:x","ty"#,
                r#"pe":"t","content":{},"content":{}}]}"#,
            ),
            r#"{"events":[{"room_id":"!r:x","sender":"@u:x","type":"t"}]}"#,
            r#"{"events":[{"event_id":5,"room_id":"!r:x","sender":"@u:x","type":"t"}]}"#,
            concat!(
                r#"{"events":[{"event_id":"$a","room_id":"!r:x","sender":"@u:x","ty"#,
                r#"pe":"t","state_key":5}]}"#,
            ),
            r#"{"events":[{}]}"#,
            r#"{"events":[["$a","!r:x","@u:x","t"]]}"#,
        ];
        for body in unusual {
            assert!(!same_as_general(body), "the one pass read {body}");
            // And the whole parse still takes it the general way.
            let p = parse(body.as_bytes()).unwrap();
            assert_eq!(seen(&p), seen(&parse_general(body).unwrap()));
        }
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

        /// An event's JSON text laid out by hand: fields in any order, any JSON whitespace,
        /// sometimes an escape in an ID or a key, a wrong type, or a field twice; with whether
        /// it has the common form the one pass reads.
        fn event_text() -> impl Strategy<Value = (String, bool)> {
            let ws = prop::sample::select(vec!["", "", " ", "\n", "\t ", "\r\n  "]);
            let id = |sigil: &'static str| {
                prop_oneof![
                    6 => "[a-z0-9]{1,8}".prop_map(move |l| (format!("\"{sigil}{l}:x\""), true)),
                    1 => "[a-z0-9]{1,8}".prop_map(move |l| (format!("\"\\u0024{l}:x\""), false)),
                    1 => Just(("null".to_owned(), false)),
                ]
            };
            let fields = (
                id("$"),
                id("!"),
                id("@"),
                prop::sample::select(vec!["\"m.room.message\"", "\"m.room.member\"", "\"\"", "7"]),
                prop::option::of(id("@")),
                json(),
                prop::bool::weighted(0.05),
                prop::bool::weighted(0.05),
            );
            (fields, prop::collection::vec(ws, 24), any::<prop::sample::Index>()).prop_map(
                |(
                    (event_id, room_id, sender, kind, state_key, content, twice, escaped_key),
                    ws,
                    order,
                )| {
                    let common = event_id.1
                        && room_id.1
                        && sender.1
                        && kind != "7"
                        && !twice
                        && !escaped_key
                        && state_key.as_ref().is_none_or(|(s, plain)| *plain || s == "null");
                    let (event_id, room_id, sender) = (event_id.0, room_id.0, sender.0);
                    let state_key = state_key.map(|s| s.0);
                    let mut parts = vec![
                        (if escaped_key { "\"\\u0065vent_id\"" } else { "\"event_id\"" }, event_id),
                        ("\"room_id\"", room_id),
                        ("\"sender\"", sender),
                        ("\"type\"", kind.to_owned()),
                        ("\"content\"", content.to_string()),
                        ("\"origin_server_ts\"", "1".to_owned()),
                        ("\"unsigned\"", "{\"age\": 5}".to_owned()),
                    ];
                    if let Some(state_key) = state_key {
                        parts.push(("\"state_key\"", state_key));
                    }
                    if twice {
                        parts.push(("\"room_id\"", "\"!again:x\"".to_owned()));
                    }
                    let n = parts.len();
                    parts.rotate_left(order.index(n));
                    let mut text = format!("{}{{", ws[0]);
                    for (i, (key, value)) in parts.iter().enumerate() {
                        let sep = if i == 0 { "" } else { "," };
                        text.push_str(&format!(
                            "{sep}{}{key}{}:{}{value}{}",
                            ws[(3 * i + 1) % 24],
                            ws[(3 * i + 2) % 24],
                            ws[(3 * i + 3) % 24],
                            ws[(3 * i + 4) % 24]
                        ));
                    }
                    text.push('}');
                    text.push_str(ws[23]);
                    (text, common)
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// The one pass and the general way agree on every body the one pass reads, and the
            /// one pass reads every body whose events all have the common form.
            #[test]
            fn the_one_pass_agrees_with_the_general_way(
                events in prop::collection::vec(event_text(), 0..8),
            ) {
                let texts: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
                let body = format!("{{\"events\": [{}]}}", texts.join(","));
                let read = super::same_as_general(&body);
                if events.iter().all(|(_, common)| *common) {
                    prop_assert!(read, "the one pass gave up on {}", body);
                }
            }

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
            fn events_are_accepted_or_rejected_never_lost(
                events in prop::collection::vec(event(), 0..12),
            ) {
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

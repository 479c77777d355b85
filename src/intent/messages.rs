//! Sending to a room: message-like events, edits, replies, reactions, redactions and read
//! markers. Sends are builders ([`SendMessage`], [`Redact`]) that act when awaited.

use std::future::IntoFuture;

use futures_util::future::BoxFuture;
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedTransactionId, RoomId, UserId,
    api::client::read_marker::set_read_marker,
    events::{
        AnyMessageLikeEventContent, MessageLikeEventContent, MessageLikeEventType,
        reaction::ReactionEventContent,
        relation::Annotation,
        room::message::{
            AddMentions, ForwardThread, ReplacementMetadata, ReplyMetadata,
            RoomMessageEventContent, RoomMessageEventContentWithoutRelation,
        },
    },
    serde::Raw,
};

use super::{DOUBLE_PUPPET_SOURCE, Intent, Result};
use crate::client::{self, RequestOptions};

impl Intent {
    /// Sends a message-like event of any type: await the returned [`SendMessage`].
    pub fn send<'a, C>(&'a self, room_id: &'a RoomId, content: &C) -> SendMessage<'a>
    where
        C: MessageLikeEventContent,
    {
        let event_type = content.event_type();
        let content = serde_json::value::to_raw_value(content).map(Raw::from_json);
        SendMessage::new(self, room_id, content.map(|c| (event_type, c)))
    }

    /// Sends a message-like event from raw JSON content, for event types ruma has no type for.
    pub fn send_raw<'a>(
        &'a self,
        room_id: &'a RoomId,
        event_type: MessageLikeEventType,
        content: Raw<AnyMessageLikeEventContent>,
    ) -> SendMessage<'a> {
        SendMessage::new(self, room_id, Ok((event_type, content)))
    }

    /// Sends plain text (`m.text`).
    pub fn send_text<'a>(&'a self, room_id: &'a RoomId, text: &str) -> SendMessage<'a> {
        self.send(room_id, &RoomMessageEventContent::text_plain(text))
    }

    /// Sends a notice (`m.notice`), the message type for bots.
    pub fn send_notice<'a>(&'a self, room_id: &'a RoomId, text: &str) -> SendMessage<'a> {
        self.send(room_id, &RoomMessageEventContent::notice_plain(text))
    }

    /// Edits the earlier message `original` with new content (an `m.replace` relation).
    pub fn edit<'a>(
        &'a self,
        room_id: &'a RoomId,
        original: &EventId,
        new_content: RoomMessageEventContentWithoutRelation,
    ) -> SendMessage<'a> {
        let metadata = ReplacementMetadata::new(original.to_owned(), None);
        self.send(room_id, &new_content.make_replacement(metadata))
    }

    /// Replies to the event `event_id` sent by `sender`, mentioning them.
    pub fn reply<'a>(
        &'a self,
        room_id: &'a RoomId,
        event_id: &EventId,
        sender: &UserId,
        content: RoomMessageEventContentWithoutRelation,
    ) -> SendMessage<'a> {
        let metadata = ReplyMetadata::new(event_id, sender, None);
        self.send(room_id, &content.make_reply_to(metadata, ForwardThread::Yes, AddMentions::Yes))
    }

    /// Reacts to an event with `key` (an `m.reaction` annotation).
    pub fn react<'a>(
        &'a self,
        room_id: &'a RoomId,
        event_id: &EventId,
        key: &str,
    ) -> SendMessage<'a> {
        let annotation = Annotation::new(event_id.to_owned(), key.to_owned());
        self.send(room_id, &ReactionEventContent::new(annotation))
    }

    /// Redacts an event: await the returned [`Redact`], optionally with a reason.
    pub fn redact<'a>(&'a self, room_id: &'a RoomId, event_id: &'a EventId) -> Redact<'a> {
        Redact { intent: self, room_id, event_id, reason: None, txn_id: None, ts: None }
    }

    /// Marks the room read up to `event_id`: the fully-read marker and a read receipt.
    pub async fn mark_read(&self, room_id: &RoomId, event_id: &EventId) -> Result<()> {
        self.ensure_joined(room_id).await?;
        let mut request = set_read_marker::v3::Request::new(room_id.to_owned());
        request.fully_read = Some(event_id.to_owned());
        request.read_receipt = Some(event_id.to_owned());
        self.client.send(request, self.as_user()).await?;
        Ok(())
    }
}

/// A message-like event on its way to a room, sent when awaited; resolves to the new event's ID.
///
/// Built by [`Intent::send`], `send_text`, `send_notice`, `edit`, `reply`, `react` and
/// `send_raw`. Optional parts are calls on it: `.at(ts)` massages the event's timestamp
/// (`origin_server_ts`, for history imported from the remote network), `.txn_id(id)` names the
/// transaction. Without one, a fresh transaction ID is made when the send starts; the client's
/// retries reuse it, so the homeserver keeps one event however often the request reaches it.
/// The send joins the room first when the state cache does not know the user joined.
///
/// ```no_run
/// # async fn example(
/// #     ghost: mxbridge::intent::Intent,
/// #     room_id: &ruma::RoomId,
/// #     event_id: &ruma::EventId,
/// #     ts: ruma::MilliSecondsSinceUnixEpoch,
/// # ) -> mxbridge::intent::Result<()> {
/// ghost.send_text(room_id, "hello").await?;
/// ghost.send_text(room_id, "an old message").at(ts).txn_id("remote-msg-17").await?;
/// ghost.react(room_id, event_id, "👍").await?;
/// ghost.redact(room_id, event_id).reason("deleted on the remote network").await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "nothing is sent until the send is awaited"]
pub struct SendMessage<'a> {
    intent: &'a Intent,
    room_id: &'a RoomId,
    /// The event type and content, or why the content could not be serialized.
    content: serde_json::Result<(MessageLikeEventType, Raw<AnyMessageLikeEventContent>)>,
    txn_id: Option<OwnedTransactionId>,
    ts: Option<MilliSecondsSinceUnixEpoch>,
}

impl<'a> SendMessage<'a> {
    fn new(
        intent: &'a Intent,
        room_id: &'a RoomId,
        content: serde_json::Result<(MessageLikeEventType, Raw<AnyMessageLikeEventContent>)>,
    ) -> Self {
        Self { intent, room_id, content, txn_id: None, ts: None }
    }

    /// Gives the event this timestamp (`origin_server_ts`) instead of the time it arrives:
    /// timestamp massaging, which the homeserver allows appservice users. This is how history
    /// is imported now that MSC2716's `/batch_send` is gone from Synapse; the events are
    /// appended at the end of the timeline.
    pub fn at(mut self, ts: MilliSecondsSinceUnixEpoch) -> Self {
        self.ts = Some(ts);
        self
    }

    /// Sends with this transaction ID rather than a fresh one. Two sends with the same ID, by
    /// the same user, give one event: the homeserver answers the second with the first's ID.
    pub fn txn_id(mut self, txn_id: impl Into<OwnedTransactionId>) -> Self {
        self.txn_id = Some(txn_id.into());
        self
    }
}

impl<'a> IntoFuture for SendMessage<'a> {
    type Output = Result<OwnedEventId>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, room_id, content, txn_id, ts } = self;
        Box::pin(async move {
            let (event_type, content) = content.map_err(client::Error::Json)?;
            let content = intent.mark(content).map_err(client::Error::Json)?;
            intent.ensure_joined(room_id).await?;
            #[cfg(feature = "encryption")]
            let (event_type, content) = intent.encrypt_for(room_id, event_type, content).await?;
            let txn_id = txn_id.unwrap_or_else(client::new_txn_id);
            // The request `Client::send` makes of ruma's `send_message_event` request, written
            // without it: the content's JSON is the body as it is, `ts` the request's own.
            let mut options = RequestOptions::as_user(intent.as_user());
            options.ts = ts;
            let body = content_body(content);
            let event_type = event_type.to_string();
            let client = &intent.client;
            Ok(client.send_room_event(room_id, &event_type, &txn_id, body, &options).await?)
        })
    }
}

/// A redaction on its way to a room, sent when awaited. Resolves to the redaction's event ID.
#[derive(Debug)]
#[must_use = "nothing is sent until the redaction is awaited"]
pub struct Redact<'a> {
    intent: &'a Intent,
    room_id: &'a RoomId,
    event_id: &'a EventId,
    reason: Option<String>,
    txn_id: Option<OwnedTransactionId>,
    ts: Option<MilliSecondsSinceUnixEpoch>,
}

impl Redact<'_> {
    /// Says why, in the redaction's content.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Gives the redaction this timestamp (see [`SendMessage::at`]).
    pub fn at(mut self, ts: MilliSecondsSinceUnixEpoch) -> Self {
        self.ts = Some(ts);
        self
    }

    /// Sends with this transaction ID rather than a fresh one (see [`SendMessage::txn_id`]).
    pub fn txn_id(mut self, txn_id: impl Into<OwnedTransactionId>) -> Self {
        self.txn_id = Some(txn_id.into());
        self
    }
}

impl<'a> IntoFuture for Redact<'a> {
    type Output = Result<OwnedEventId>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, room_id, event_id, reason, txn_id, ts } = self;
        Box::pin(async move {
            intent.ensure_joined(room_id).await?;
            let txn_id = txn_id.unwrap_or_else(client::new_txn_id);
            // ruma's redaction request has no timestamp field: the client adds `?ts=`.
            let mut options = RequestOptions::as_user(intent.as_user());
            options.ts = ts;
            let source = intent.puppet_source.as_deref();
            let body =
                redaction_body(reason, source).map_err(|e| client::Error::IntoHttp(e.into()))?;
            let client = &intent.client;
            Ok(client.redact_room_event(room_id, event_id, &txn_id, body, &options).await?)
        })
    }
}

/// A message-like event's content as the request body: its JSON as it is, which is what ruma's
/// request writes (without a copy).
fn content_body(content: Raw<AnyMessageLikeEventContent>) -> Vec<u8> {
    Box::<str>::from(content.into_json()).into_boxed_bytes().into_vec()
}

/// A redaction's JSON content as ruma's `redact_event` request writes it (`reason` when there
/// is one), with a double puppet's mark added as a map key.
fn redaction_body(reason: Option<String>, source: Option<&str>) -> serde_json::Result<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct Body {
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    }
    let Some(source) = source else { return serde_json::to_vec(&Body { reason }) };
    let mut content = serde_json::Map::new();
    if let Some(reason) = reason {
        content.insert("reason".to_owned(), reason.into());
    }
    content.insert(DOUBLE_PUPPET_SOURCE.to_owned(), source.into());
    serde_json::to_vec(&content)
}

#[cfg(test)]
mod tests {
    use ruma::{
        api::{
            MatrixVersion, OutgoingRequestExt as _, SupportedVersions,
            auth_scheme::SendAccessToken,
            client::{message::send_message_event, redact::redact_event},
        },
        event_id, owned_room_id,
    };

    use super::*;

    /// The body ruma's request writes.
    fn ruma_body<R>(request: R) -> Vec<u8>
    where
        R: ruma::api::OutgoingRequest<
                Authentication = ruma::api::auth_scheme::AccessToken,
                PathBuilder = ruma::api::path_builder::VersionHistory,
            >,
    {
        let versions = SupportedVersions {
            versions: [MatrixVersion::V1_12].into(),
            features: Default::default(),
        };
        let token = SendAccessToken::Always("token");
        let request: ruma::exports::http::Request<Vec<u8>> = request
            .try_into_http_request("http://localhost", token, std::borrow::Cow::Owned(versions))
            .unwrap();
        request.into_body()
    }

    /// The content goes out as the JSON ruma's send request writes: the same bytes, spacing,
    /// escapes and key order included.
    #[test]
    fn a_content_body_is_the_json_ruma_sends() {
        let typed = RoomMessageEventContent::text_plain("a \"quoted\" é 😀 \u{1}");
        let typed = Raw::new(&typed).unwrap().cast_unchecked();
        let odd = [
            "{}",
            r#"{ "body" : "x",  "msgtype":"m.text" }"#,
            r#"{"z":1,"a":[1.50,2e3,-0],"u":"\u00e9\ud83d\ude00","n":null}"#,
            "{\n\t\"nested\": {\"deep\": [true, false]}\n}",
        ];
        let raws = odd.map(|json| Raw::from_json_string(json.to_owned()).unwrap());
        for content in std::iter::once(typed).chain(raws) {
            let request = send_message_event::v3::Request::new_raw(
                owned_room_id!("!room:localhost"),
                "txn".into(),
                "m.room.message".into(),
                content.clone(),
            );
            assert_eq!(content_body(content.clone()), ruma_body(request), "{}", content.json());
        }
    }

    /// A redaction's body is the JSON ruma's redaction request writes; a double puppet's adds
    /// the mark to it as a JSON object's key (after the reason, as ruma's body parsed into a
    /// map and the mark inserted).
    #[test]
    fn a_redaction_body_is_the_json_ruma_sends() {
        let reasons = [None, Some(""), Some("spam"), Some("\"q\" \\ é 😀 \u{1}\n</script>")];
        for reason in reasons.map(|r| r.map(ToOwned::to_owned)) {
            let mut request = redact_event::v3::Request::new(
                owned_room_id!("!room:localhost"),
                event_id!("$event:localhost").to_owned(),
                "txn".into(),
            );
            request.reason.clone_from(&reason);
            let by_ruma = ruma_body(request);
            assert_eq!(redaction_body(reason.clone(), None).unwrap(), by_ruma, "{reason:?}");
            let mut marked: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&by_ruma).unwrap();
            marked.insert(DOUBLE_PUPPET_SOURCE.to_owned(), "bridge \"x\"".into());
            let marked = serde_json::to_vec(&marked).unwrap();
            assert_eq!(redaction_body(reason.clone(), Some("bridge \"x\"")).unwrap(), marked);
        }
    }
}

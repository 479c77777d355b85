//! Sending to a room: message-like events, edits, replies, reactions, redactions and read
//! markers. Sends are builders ([`SendMessage`], [`Redact`]) that act when awaited.

use std::future::IntoFuture;

use futures_util::future::BoxFuture;
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedTransactionId, RoomId, UserId,
    api::client::{
        message::send_message_event, read_marker::set_read_marker, redact::redact_event,
    },
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

use super::{Intent, Result};
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
            let mut request = send_message_event::v3::Request::new_raw(
                room_id.to_owned(),
                txn_id,
                event_type,
                content,
            );
            request.timestamp = ts;
            Ok(intent.client.send(request, intent.as_user()).await?.event_id)
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
            let (room_id, event_id) = (room_id.to_owned(), event_id.to_owned());
            if let Some(source) = &intent.puppet_source {
                // A double puppet's redaction carries the mark in its content too.
                let mut redaction = redact_event::v3::Request::new(room_id, event_id, txn_id);
                redaction.reason = reason;
                let request = marked_redaction::Request { redaction, source: source.to_string() };
                return Ok(intent.client.send_with(request, &options).await?.event_id);
            }
            let mut request = redact_event::v3::Request::new(room_id, event_id, txn_id);
            request.reason = reason;
            Ok(intent.client.send_with(request, &options).await?.event_id)
        })
    }
}

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}` with the double-puppet mark in the body:
/// ruma's request, whose body has only `reason`, with one more key.
mod marked_redaction {
    use ruma::{
        api::{
            Metadata, OutgoingRequest, client::redact::redact_event::v3::Request as Redaction,
            error::IntoHttpError, path_builder::PathBuilder,
        },
        exports::http,
    };

    use crate::intent::DOUBLE_PUPPET_SOURCE;

    /// A redaction whose content carries the mark.
    #[derive(Clone, Debug)]
    pub(super) struct Request {
        pub(super) redaction: Redaction,
        pub(super) source: String,
    }

    impl Metadata for Request {
        const METHOD: http::Method = Redaction::METHOD;
        const RATE_LIMITED: bool = Redaction::RATE_LIMITED;
        type Authentication = <Redaction as Metadata>::Authentication;
        type PathBuilder = <Redaction as Metadata>::PathBuilder;
        const PATH_BUILDER: Self::PathBuilder = Redaction::PATH_BUILDER;
    }

    /// A JSON body already serialized.
    pub(super) struct Json(Vec<u8>);

    impl ruma::api::OutgoingBody for Json {
        type Error = std::convert::Infallible;

        fn content_type(&self) -> Option<http::HeaderValue> {
            Some(http::HeaderValue::from_static("application/json"))
        }

        fn try_into_buf<T: Default + bytes::BufMut + AsRef<[u8]>>(self) -> Result<T, Self::Error> {
            let mut buf = T::default();
            buf.put_slice(&self.0);
            Ok(buf)
        }
    }

    impl OutgoingRequest for Request {
        type Body = Json;
        type EndpointError = <Redaction as OutgoingRequest>::EndpointError;
        type IncomingResponse = <Redaction as OutgoingRequest>::IncomingResponse;

        fn try_into_http_request_inner(
            self,
            base_url: &str,
            path_builder_input: <Self::PathBuilder as PathBuilder>::Input<'_>,
        ) -> Result<http::Request<Json>, IntoHttpError> {
            use ruma::api::OutgoingBody as _;
            let request =
                self.redaction.try_into_http_request_inner(base_url, path_builder_input)?;
            let (parts, body) = request.into_parts();
            let body: Vec<u8> = body.try_into_buf().map_err(Into::<IntoHttpError>::into)?;
            let mut content: serde_json::Map<String, serde_json::Value> = if body.is_empty() {
                serde_json::Map::new()
            } else {
                serde_json::from_slice(&body)?
            };
            content.insert(DOUBLE_PUPPET_SOURCE.to_owned(), self.source.into());
            Ok(http::Request::from_parts(parts, Json(serde_json::to_vec(&content)?)))
        }
    }
}

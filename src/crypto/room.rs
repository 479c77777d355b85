//! Encrypted rooms: reading an `m.room.encrypted` event, and encrypting what an intent sends.

use matrix_sdk_common::deserialized_responses::UnableToDecryptReason;
use matrix_sdk_crypto::{
    CollectStrategy, DecryptionSettings, EncryptionSettings, RoomEventDecryptionResult,
    TrustRequirement,
    types::events::room::encrypted::{EncryptedEvent, RoomEncryptedEventContent},
};
use ruma::{
    OwnedUserId, RoomId,
    events::{
        AnyMessageLikeEventContent,
        room::{encryption::RoomEncryptionEventContent, history_visibility::HistoryVisibility},
    },
    serde::Raw,
};

use super::{BridgeDevice, CryptoError};
use crate::{
    Store,
    event::Event,
    store::{Membership, RoomStateField},
};

/// What became of an encrypted event.
#[derive(Debug)]
pub(crate) enum Decryption {
    /// Its plaintext, as an event of its own (see [`Event::decrypted`]).
    Decrypted(Event),
    /// Its room key (of this Megolm session) has not arrived, or not from early enough in the
    /// session: a later key may open it.
    AwaitingKey {
        /// The Megolm session.
        session_id: String,
    },
    /// It cannot be read, whatever arrives later (malformed, or a key that does not fit).
    Failed(String),
}

impl BridgeDevice {
    /// Decrypts a room event with the room keys the device holds.
    ///
    /// # Errors
    /// When the crypto store fails (the event may decrypt on another try).
    pub(crate) async fn decrypt(&self, event: &Event) -> Result<Decryption, CryptoError> {
        let raw: &Raw<EncryptedEvent> = event.raw().cast_ref_unchecked();
        let settings =
            DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted };
        let result = self.machine().try_decrypt_room_event(raw, &event.room_id, &settings).await?;
        Ok(match result {
            RoomEventDecryptionResult::Decrypted(decrypted) => {
                match Event::decrypted(decrypted.event.json().get()) {
                    Ok(plain)
                        if plain.event_id == event.event_id && plain.sender == event.sender =>
                    {
                        Decryption::Decrypted(plain)
                    }
                    Ok(_) => Decryption::Failed("the plaintext names another event".into()),
                    Err(e) => Decryption::Failed(format!("bad plaintext: {e}")),
                }
            }
            RoomEventDecryptionResult::UnableToDecrypt(info) => match info.reason {
                UnableToDecryptReason::MissingMegolmSession { .. }
                | UnableToDecryptReason::UnknownMegolmMessageIndex => match info.session_id {
                    Some(session_id) => Decryption::AwaitingKey { session_id },
                    None => Decryption::Failed("no session ID".into()),
                },
                reason => Decryption::Failed(format!("cannot decrypt: {reason:?}")),
            },
        })
    }

    /// Encrypts a message-like event for `room_id`, whose `m.room.encryption` content is
    /// `settings`: the members' devices are looked up, Olm sessions made where missing and the
    /// room key shared with every joined or invited user outside the bridge's namespace, then
    /// the content is encrypted with it.
    ///
    /// # Errors
    /// When the store or the homeserver fails, or the machine refuses.
    pub(crate) async fn encrypt(
        &self,
        store: &Store,
        room_id: &RoomId,
        settings: RoomEncryptionEventContent,
        event_type: &str,
        content: &Raw<AnyMessageLikeEventContent>,
    ) -> Result<Raw<RoomEncryptedEventContent>, CryptoError> {
        let mut members: Vec<OwnedUserId> = Vec::new();
        for membership in [Membership::Join, Membership::Invite] {
            members.extend(
                store
                    .members_with(room_id, membership)
                    .await?
                    .into_iter()
                    .map(|m| m.user_id)
                    .filter(|user| !self.client().may_act_as(user)),
            );
        }
        {
            // One room key shared at a time: a second send waits and then finds it shared.
            let _sharing = self.sharing.lock().await;
            let machine = self.machine();
            machine.update_tracked_users(members.iter().map(AsRef::as_ref)).await?;
            self.send_outgoing_requests().await?;
            if let Some((id, claim)) =
                machine.get_missing_sessions(members.iter().map(AsRef::as_ref)).await?
            {
                self.send_claim(&id, &claim).await?;
            }
            let settings = EncryptionSettings::new(
                settings,
                HistoryVisibility::Shared,
                CollectStrategy::AllDevices,
            );
            let requests = machine
                .share_room_key(room_id, members.iter().map(AsRef::as_ref), settings)
                .await?;
            for request in requests {
                self.send_to_device(&request).await?;
            }
        }
        let encrypted = self.machine().encrypt_room_event_raw(room_id, event_type, content).await;
        Ok(encrypted.map_err(|e| CryptoError::Megolm(e.to_string()))?.content)
    }
}

/// The `m.room.encryption` content of a room, when the state cache says it is encrypted.
///
/// # Errors
/// When the store fails or the cached content does not read.
pub(crate) async fn room_encryption(
    store: &Store,
    room_id: &RoomId,
) -> Result<Option<RoomEncryptionEventContent>, CryptoError> {
    let Some(json) = store.room_state(room_id, RoomStateField::Encryption).await? else {
        return Ok(None);
    };
    serde_json::from_str(&json)
        .map(Some)
        .map_err(|e| CryptoError::Request(format!("bad m.room.encryption content: {e}")))
}

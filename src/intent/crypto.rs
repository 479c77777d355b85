//! Sends into encrypted rooms: what an intent made by the [`Context`] sends into a room whose
//! state says it is encrypted is encrypted by the bridge device first.

use ruma::{
    RoomId,
    events::{AnyMessageLikeEventContent, MessageLikeEventType},
    serde::Raw,
};

use super::{Intent, IntentError, Result};
use crate::Context;

impl Intent {
    /// Gives the intent the context's bridge device, when encryption is allowed.
    pub(crate) fn with_device_of(mut self, ctx: &Context) -> Self {
        self.device = ctx.device_slot().cloned();
        self
    }

    /// Whether what this intent sends into `room_id` is encrypted: the room is encrypted and
    /// the intent has the bridge device.
    ///
    /// # Errors
    /// [`IntentError::Encryption`] when the room is encrypted and the device has not started.
    pub(super) async fn encrypts_for(&self, room_id: &RoomId) -> Result<bool> {
        let Some(slot) = &self.device else { return Ok(false) };
        let encryption = crate::crypto::room_encryption(&self.store, room_id)
            .await
            .map_err(|e| IntentError::Encryption(e.to_string()))?;
        if encryption.is_none() {
            return Ok(false);
        }
        if slot.get().is_none() {
            return Err(IntentError::Encryption("the bridge device has not started yet".into()));
        }
        Ok(true)
    }

    /// The event as it goes into the room: encrypted (`m.room.encrypted`) when the room is
    /// encrypted and this intent has the bridge device, as it is otherwise.
    ///
    /// # Errors
    /// [`IntentError::Encryption`] when the room is encrypted and the event could not be
    /// encrypted (nothing is then sent in plaintext).
    pub(super) async fn encrypt_for(
        &self,
        room_id: &RoomId,
        event_type: MessageLikeEventType,
        content: Raw<AnyMessageLikeEventContent>,
    ) -> Result<(MessageLikeEventType, Raw<AnyMessageLikeEventContent>)> {
        let Some(slot) = &self.device else { return Ok((event_type, content)) };
        let encryption = crate::crypto::room_encryption(&self.store, room_id)
            .await
            .map_err(|e| IntentError::Encryption(e.to_string()))?;
        let Some(settings) = encryption else { return Ok((event_type, content)) };
        let Some(device) = slot.get() else {
            return Err(IntentError::Encryption("the bridge device has not started yet".into()));
        };
        let encrypted = device
            .encrypt(&self.store, room_id, settings, &event_type.to_string(), &content)
            .await
            .map_err(|e| IntentError::Encryption(e.to_string()))?;
        Ok((MessageLikeEventType::RoomEncrypted, encrypted.cast_unchecked()))
    }
}

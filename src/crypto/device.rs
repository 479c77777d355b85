//! The bridge device: one device of the bot, created through the appservice (MSC4190), whose
//! `OlmMachine` keeps its keys in the bridge's database.

use std::sync::Arc;

use matrix_sdk_crypto::{
    OlmMachine, OlmMachineBuilder,
    store::CryptoStoreError,
    types::requests::{AnyOutgoingRequest, OutgoingRequest, ToDeviceRequest},
};
use ruma::{
    DeviceId, OwnedDeviceId,
    api::client::{
        device::update_device,
        keys::{get_keys, upload_signing_keys},
        message::send_message_event,
        to_device::send_event_to_device,
    },
};

use super::SqlCryptoStore;
use crate::{
    Store,
    client::{Client, RequestOptions},
    store::StoreError,
};

/// The device whose cross-signing keys were uploaded (`mx_kv`).
pub(super) const KV_CROSS_SIGNED: &str = "cross_signed_device";
/// The display name of the bridge device, as the users' clients list it.
const DEVICE_NAME: &str = "Bridge";

/// Errors of the bridge device.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The bridge's database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The crypto store failed (or holds another device's account).
    #[error("crypto store: {0}")]
    CryptoStore(#[from] CryptoStoreError),
    /// The machine refused a response or failed to process it.
    #[error("crypto: {0}")]
    Olm(#[from] matrix_sdk_crypto::OlmError),
    /// The homeserver refused a request of the device.
    #[error(transparent)]
    Client(#[from] crate::client::Error),
    /// Encrypting a room event failed.
    #[error("cannot encrypt: {0}")]
    Megolm(String),
    /// An encrypted attachment could not be decrypted (a changed file, or an unknown form).
    #[error("attachment: {0}")]
    Attachment(String),
    /// A request could not be built.
    #[error("cannot build a request: {0}")]
    Request(String),
}

/// The bridge device and its machine. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BridgeDevice {
    machine: OlmMachine,
    client: Client,
    device_id: OwnedDeviceId,
    /// The machine's requests are sent by one task at a time, so none goes out twice.
    sending: Arc<tokio::sync::Mutex<()>>,
    /// Room keys are shared by one task at a time (see `room.rs`).
    pub(super) sharing: Arc<tokio::sync::Mutex<()>>,
}

impl BridgeDevice {
    /// Starts the bridge device `device_id`: the device created or kept on the homeserver
    /// (`PUT /devices/{id}` as the bot, which MSC4190 lets an appservice do), the machine
    /// loaded from the crypto store, and its requests sent (the device's keys uploaded on the
    /// first start).
    ///
    /// # Errors
    /// When the database or the homeserver fails, or the crypto store holds the account of
    /// another device.
    pub async fn start(
        store: &Store,
        client: &Client,
        device_id: OwnedDeviceId,
    ) -> Result<Self, CryptoError> {
        let mut create = update_device::v3::Request::new(device_id.clone());
        create.display_name = Some(DEVICE_NAME.to_owned());
        client.send(create, None).await?;
        let bot = client.bot_user_id().to_owned();
        let machine = OlmMachineBuilder::new(&bot, &device_id)
            .with_crypto_store(SqlCryptoStore::new(store.clone()))
            .build()
            .await?;
        let device = Self {
            machine,
            client: client.clone(),
            device_id,
            sending: Arc::new(tokio::sync::Mutex::new(())),
            sharing: Arc::new(tokio::sync::Mutex::new(())),
        };
        let sent = device.send_outgoing_requests().await?;
        if let Err(e) = device.cross_sign(store).await {
            // The device works without: users' clients then show it as not verified by its
            // owner. Tried again at the next start.
            tracing::warn!(error = %e, "could not cross-sign the bridge device");
        }
        tracing::info!(device_id = %device.device_id, requests = sent, "bridge device ready");
        Ok(device)
    }

    /// Gives the bot a cross-signing identity (made on the first start and kept in the crypto
    /// store) and signs the bridge device with it, so users' clients see the device as verified
    /// by its owner. Once uploaded, it is not uploaded again.
    ///
    /// # Errors
    /// When the homeserver refuses the keys (Synapse asks a user for interactive auth when a
    /// cross-signing identity exists already).
    pub(super) async fn cross_sign(&self, store: &Store) -> Result<(), CryptoError> {
        if store.kv_get(super::KV_NAMESPACE, KV_CROSS_SIGNED).await?.as_deref()
            == Some(self.device_id.as_str())
        {
            return Ok(());
        }
        let requests = self
            .machine
            .bootstrap_cross_signing(false)
            .await
            .map_err(|e| CryptoError::Request(e.to_string()))?;
        if let Some(upload) = &requests.upload_keys_req {
            self.send_one(upload).await?;
        }
        let keys = requests.upload_signing_keys_req;
        let raw = |key: Option<matrix_sdk_crypto::types::CrossSigningKey>| {
            key.map(|k| ruma::serde::Raw::new(&k).map(ruma::serde::Raw::cast_unchecked))
                .transpose()
                .map_err(|e| CryptoError::Request(e.to_string()))
        };
        let mut upload = upload_signing_keys::v3::Request::new();
        upload.master_key = raw(keys.master_key)?;
        upload.self_signing_key = raw(keys.self_signing_key)?;
        upload.user_signing_key = raw(keys.user_signing_key)?;
        self.client.send_with(upload, &self.options()).await?;
        self.client.send_with(requests.upload_signatures_req, &self.options()).await?;
        store.kv_put(super::KV_NAMESPACE, KV_CROSS_SIGNED, self.device_id.as_str()).await?;
        tracing::info!(device_id = %self.device_id, "the bridge device is cross-signed");
        Ok(())
    }

    /// The bridge device's ID.
    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// The machine, for what this module does not wrap yet.
    pub fn machine(&self) -> &OlmMachine {
        &self.machine
    }

    /// Hands the bridge device's part of a transaction to the machine, then sends what it asks
    /// for in return (a key upload when the one-time keys ran low, key queries for changed
    /// devices). Returns the room keys that arrived.
    ///
    /// # Errors
    /// When the machine's store or a request fails.
    pub async fn receive(
        &self,
        input: super::DeviceInput,
    ) -> Result<Vec<matrix_sdk_crypto::store::types::RoomKeyInfo>, CryptoError> {
        let room_keys = input.feed(&self.machine).await?;
        self.send_outgoing_requests().await?;
        Ok(room_keys)
    }

    /// The client the device's requests go through (the appservice's).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Sends every request the machine has waiting (key uploads and queries, claims, to-device
    /// messages, signatures) as the bot with the bridge device asserted, and hands each
    /// response back to the machine. Returns how many went out.
    ///
    /// # Errors
    /// When a request fails: the machine asks for it again next time.
    pub async fn send_outgoing_requests(&self) -> Result<usize, CryptoError> {
        let _one_at_a_time = self.sending.lock().await;
        let requests = self.machine.outgoing_requests().await?;
        for request in &requests {
            self.send_one(request).await?;
        }
        Ok(requests.len())
    }

    async fn send_one(&self, request: &OutgoingRequest) -> Result<(), CryptoError> {
        let id = request.request_id();
        let options = self.options();
        let client = &self.client;
        match request.request() {
            AnyOutgoingRequest::KeysUpload(r) => {
                let response = client.send_with(r.clone(), &options).await?;
                self.machine.mark_request_as_sent(id, &response).await?;
            }
            AnyOutgoingRequest::KeysQuery(r) => {
                let mut query = get_keys::v3::Request::new();
                query.device_keys = r.device_keys.clone();
                query.timeout = r.timeout;
                let response = client.send_with(query, &options).await?;
                self.machine.mark_request_as_sent(id, &response).await?;
            }
            AnyOutgoingRequest::KeysClaim(r) => self.send_claim(id, r).await?,
            AnyOutgoingRequest::ToDeviceRequest(r) => self.send_to_device(r).await?,
            AnyOutgoingRequest::SignatureUpload(r) => {
                let response = client.send_with(r.clone(), &options).await?;
                self.machine.mark_request_as_sent(id, &response).await?;
            }
            AnyOutgoingRequest::RoomMessage(r) => {
                let send = send_message_event::v3::Request::new(
                    r.room_id.clone(),
                    r.txn_id.clone(),
                    &*r.content,
                )
                .map_err(|e| CryptoError::Request(e.to_string()))?;
                let response = client.send_with(send, &options).await?;
                self.machine.mark_request_as_sent(id, &response).await?;
            }
        }
        Ok(())
    }

    /// The options of the device's requests: as the bot, with the bridge device asserted.
    pub(super) fn options(&self) -> RequestOptions {
        RequestOptions::as_user(None).with_device(&self.device_id)
    }

    /// Claims one-time keys (`/keys/claim`) and hands the answer to the machine.
    pub(super) async fn send_claim(
        &self,
        id: &ruma::TransactionId,
        claim: &ruma::api::client::keys::claim_keys::v3::Request,
    ) -> Result<(), CryptoError> {
        let response = self.client.send_with(claim.clone(), &self.options()).await?;
        self.machine.mark_request_as_sent(id, &response).await?;
        Ok(())
    }

    /// Sends a to-device request of the machine and tells the machine it went out.
    pub(super) async fn send_to_device(&self, r: &ToDeviceRequest) -> Result<(), CryptoError> {
        let send = send_event_to_device::v3::Request::new_raw(
            r.event_type.clone(),
            r.txn_id.clone(),
            r.messages.clone(),
        );
        let response = self.client.send_with(send, &self.options()).await?;
        self.machine.mark_request_as_sent(&r.txn_id, &response).await?;
        Ok(())
    }
}

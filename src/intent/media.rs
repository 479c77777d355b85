//! Media: uploading as this user, whole or streamed. Downloading needs no user:
//! [`Client::download`], or [`Client::download_stream`] chunk by chunk.
//!
//! [`Client::download`]: crate::client::Client::download
//! [`Client::download_stream`]: crate::client::Client::download_stream

use std::future::IntoFuture;

use futures_util::future::BoxFuture;
use ruma::{OwnedMxcUri, api::client::media::create_content};

use super::{Intent, Result};
use crate::client::UploadBody;

impl Intent {
    /// Uploads media as this user: await the returned [`Upload`] for its `mxc://` URI. The
    /// homeserver refuses a file over its limit with 413 `M_TOO_LARGE`.
    pub fn upload(&self, data: Vec<u8>) -> Upload<'_> {
        Upload { intent: self, data, content_type: None, filename: None }
    }
}

/// An upload on its way to the media repository, done when awaited; resolves to the `mxc://`
/// URI. The content type and file name are optional calls on it.
///
/// ```no_run
/// # async fn example(ghost: mxbridge::intent::Intent) -> mxbridge::intent::Result<()> {
/// let upload = ghost.upload(b"hello".to_vec()).content_type("text/plain");
/// let mxc = upload.filename("hello.txt").await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "nothing is uploaded until the upload is awaited"]
pub struct Upload<'a> {
    intent: &'a Intent,
    data: Vec<u8>,
    content_type: Option<String>,
    filename: Option<String>,
}

impl Upload<'_> {
    /// The media's MIME type (`Content-Type`).
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// The file name the media repository keeps with it.
    pub fn filename(mut self, filename: impl Into<String>) -> Self {
        self.filename = Some(filename.into());
        self
    }
}

impl<'a> IntoFuture for Upload<'a> {
    type Output = Result<OwnedMxcUri>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, data, content_type, filename } = self;
        Box::pin(async move {
            intent.ensure_registered().await?;
            let mut request = create_content::v3::Request::new(data);
            request.content_type = content_type;
            request.filename = filename;
            Ok(intent.client.send(request, intent.as_user()).await?.content_uri)
        })
    }
}

impl Intent {
    /// Uploads a file for a message in `room_id`, and returns the source the message names it
    /// by: in an encrypted room (with the bridge device of an intent made by the
    /// [`Context`](crate::Context)) the file is encrypted first and the source is the
    /// encrypted `file`; elsewhere it is the plain `url`. The whole file is in memory.
    ///
    /// ```no_run
    /// # async fn example(ghost: mxbridge::intent::Intent, room_id: &ruma::RoomId, png: Vec<u8>)
    /// # -> mxbridge::intent::Result<()> {
    /// use ruma::events::room::message::{
    ///     ImageMessageEventContent, MessageType, RoomMessageEventContent,
    /// };
    ///
    /// let source = ghost.upload_media(room_id, png, "image/png", Some("cat.png")).await?;
    /// let image = ImageMessageEventContent::new("cat.png".into(), source);
    /// ghost.send(room_id, &RoomMessageEventContent::new(MessageType::Image(image))).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Intent::upload`]; [`IntentError::Encryption`](super::IntentError::Encryption) when
    /// the room is encrypted and the bridge device has not started.
    pub async fn upload_media(
        &self,
        room_id: &ruma::RoomId,
        data: Vec<u8>,
        content_type: &str,
        filename: Option<&str>,
    ) -> Result<ruma::events::room::MediaSource> {
        use ruma::events::room::MediaSource;
        #[cfg(not(feature = "encryption"))]
        let _ = room_id;
        #[cfg(feature = "encryption")]
        if self.encrypts_for(room_id).await? {
            let (ciphertext, info) = crate::crypto::encrypt_attachment(&data);
            drop(data);
            let mxc = self.upload(ciphertext).content_type("application/octet-stream").await?;
            return Ok(MediaSource::Encrypted(Box::new(crate::crypto::encrypted_file(mxc, info))));
        }
        let upload = self.upload(data).content_type(content_type);
        let upload = match filename {
            Some(name) => upload.filename(name),
            None => upload,
        };
        Ok(MediaSource::Plain(upload.await?))
    }

    /// Downloads the file a message names, decrypted when it is an encrypted room's attachment
    /// (its `file`; needs the `encryption` feature). Returns the bytes and, for a plain `url`,
    /// the content type the media repository gave. Any intent may download any file: the
    /// request goes out as the bot.
    ///
    /// # Errors
    /// As [`Client::download`](crate::client::Client::download);
    /// [`client::Error::Attachment`](crate::client::Error::Attachment) when an encrypted file
    /// does not decrypt (its hash does not match) or this build cannot decrypt.
    pub async fn download_media(
        &self,
        source: &ruma::events::room::MediaSource,
    ) -> Result<(Vec<u8>, Option<String>)> {
        use ruma::events::room::MediaSource;
        let client = self.client.appservice();
        match source {
            MediaSource::Plain(mxc) => Ok(client.download(mxc).await?),
            #[cfg(feature = "encryption")]
            MediaSource::Encrypted(file) => {
                let (ciphertext, _) = client.download(&file.url).await?;
                let plaintext = crate::crypto::decrypt_attachment(&ciphertext, file)
                    .map_err(|e| crate::client::Error::Attachment(e.to_string()))?;
                Ok((plaintext, None))
            }
            #[cfg(not(feature = "encryption"))]
            MediaSource::Encrypted(_) => Err(crate::client::Error::Attachment(
                "this build has no `encryption` feature".into(),
            )
            .into()),
        }
    }

    /// Uploads media whose bytes are read as they are sent (see [`UploadBody`]), so a large file
    /// never sits in memory whole. Over the homeserver's upload limit it fails at once with
    /// [`crate::client::Error::MediaTooLarge`], which a bridge can show the sender.
    pub async fn upload_stream(
        &self,
        body: UploadBody,
        content_type: &str,
        filename: Option<&str>,
    ) -> Result<OwnedMxcUri> {
        self.ensure_registered().await?;
        Ok(self.client.upload_stream(self.as_user(), body, content_type, filename).await?)
    }
}

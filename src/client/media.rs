//! Media that streams: uploads whose body is read as it is sent, and downloads read chunk by
//! chunk, so a bridge never holds a whole file in memory. The homeserver's upload limit is
//! checked before an upload of known size starts.

use ruma::{MxcUri, OwnedMxcUri, UserId, api::EndpointError as _, exports::http};

use super::{Client, Error, Result};

/// A media download, read chunk by chunk ([`MediaStream::chunk`]).
#[derive(Debug)]
pub struct MediaStream {
    response: reqwest::Response,
}

impl MediaStream {
    /// The media's MIME type, when the homeserver gave one.
    pub fn content_type(&self) -> Option<&str> {
        self.response.headers().get(reqwest::header::CONTENT_TYPE)?.to_str().ok()
    }

    /// The media's size in bytes, when the homeserver gave it.
    pub fn content_length(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// The next chunk of the media; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>> {
        Ok(self.response.chunk().await?)
    }
}

/// The body of a streamed upload: its bytes as they come, and how many there are.
#[derive(Debug)]
pub struct UploadBody {
    body: reqwest::Body,
    length: u64,
}

impl UploadBody {
    /// A body of `length` bytes read from `stream` as the upload goes.
    pub fn from_stream<S>(stream: S, length: u64) -> Self
    where
        S: futures_util::TryStream + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        bytes::Bytes: From<S::Ok>,
    {
        Self { body: reqwest::Body::wrap_stream(stream), length }
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.length
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }
}

impl Client {
    /// The largest upload the homeserver takes (`m.upload.size` of the media config), asked
    /// once and remembered; `None` when it sets no limit.
    pub async fn upload_limit(&self) -> Result<Option<u64>> {
        if let Some(limit) = *self.inner.upload_limit.read().expect("lock poisoned") {
            return Ok(limit);
        }
        let request = ruma::api::client::authenticated_media::get_media_config::v1::Request::new();
        let limit = match self.send(request, None).await {
            Ok(config) => Some(u64::from(config.upload_size)),
            Err(e) if e.is_unrecognized_endpoint() => None,
            Err(e) => return Err(e),
        };
        *self.inner.upload_limit.write().expect("lock poisoned") = Some(limit);
        Ok(limit)
    }

    /// Uploads media as `as_user` (a ghost; `None` for the bot) with a body read as it is sent.
    /// Not retried (the body is gone once sent): retry the whole upload on an error.
    ///
    /// # Errors
    /// [`Error::MediaTooLarge`] before anything is sent when the body is over the homeserver's
    /// limit; [`Error::NotInNamespace`] for a user the appservice may not act as.
    pub async fn upload_stream(
        &self,
        as_user: Option<&UserId>,
        body: UploadBody,
        content_type: &str,
        filename: Option<&str>,
    ) -> Result<OwnedMxcUri> {
        if let Some(user) = as_user {
            self.check_identity(user)?;
        }
        if let Some(limit) = self.upload_limit().await?
            && body.length > limit
        {
            return Err(Error::MediaTooLarge { size: body.length, limit });
        }
        let mut url = url::Url::parse(&format!("{}/_matrix/media/v3/upload", self.inner.base))
            .map_err(|e| Error::InvalidResponse(format!("bad homeserver URL: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(name) = filename {
                query.append_pair("filename", name);
            }
            if let Some(user) = as_user.filter(|u| *u != self.inner.bot) {
                query.append_pair("user_id", user.as_str());
            }
        }
        let response = self
            .inner
            .http
            .post(url)
            .bearer_auth(self.inner.as_token.expose())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(reqwest::header::CONTENT_LENGTH, body.length)
            .body(body.body)
            .send()
            .await?;
        #[derive(serde::Deserialize)]
        struct Uploaded {
            content_uri: OwnedMxcUri,
        }
        let response = error_for_status(response).await?;
        Ok(response.json::<Uploaded>().await?.content_uri)
    }

    /// Downloads media as a stream (authenticated media).
    ///
    /// # Errors
    /// [`Error::InvalidResponse`] for a malformed URI, before anything is sent.
    pub async fn download_stream(&self, mxc: &MxcUri) -> Result<MediaStream> {
        let (server, media_id) =
            mxc.parts().map_err(|e| Error::InvalidResponse(format!("bad mxc URI: {e}")))?;
        let url = format!(
            "{}/_matrix/client/v1/media/download/{}/{}",
            self.inner.base,
            urlencode(server.as_str()),
            urlencode(media_id)
        );
        let response =
            self.inner.http.get(url).bearer_auth(self.inner.as_token.expose()).send().await?;
        Ok(MediaStream { response: error_for_status(response).await? })
    }
}

/// The response, or its Matrix error.
async fn error_for_status(response: reqwest::Response) -> Result<reqwest::Response> {
    if response.status().as_u16() < 400 {
        return Ok(response);
    }
    let status = response.status();
    let body = response.bytes().await?;
    let http = http::Response::builder()
        .status(status)
        .body(body.as_ref())
        .map_err(|e| Error::InvalidResponse(e.to_string()))?;
    Err(Error::from_ruma(ruma::api::error::Error::from_http_response(http)))
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

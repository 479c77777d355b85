//! Small helpers shared by several modules.

use std::{fs, io, path::Path};

/// A hash map with foldhash's seeded hasher: the maps of the hot paths, keyed by IDs a
/// homeserver sends or by fingerprints, where SipHash showed up in profiles.
#[allow(clippy::disallowed_types)] // The one place the standard map is named.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set of [`FastMap`].
#[allow(clippy::disallowed_types)]
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Where `part` lies inside `whole`, if it is a slice of it (found by address: the parsers
/// borrow from the text they read, so a borrowed field tells where it was).
pub(crate) fn range_in(whole: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// Writes `contents` to `path`, readable and writable by the owner only (mode 0600 on Unix).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut file = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents)?;
    file.sync_all()
}

/// A YAML document that did not deserialize: where, and what was wrong.
#[derive(Debug, Clone)]
pub(crate) struct YamlError {
    /// The dotted key path where deserialization stopped (empty at the top level).
    pub(crate) key: String,
    /// The parser's message, which carries line and column.
    pub(crate) message: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() || self.key == "." {
            f.write_str(&self.message)
        } else {
            write!(f, "key `{}`: {}", self.key, self.message)
        }
    }
}

/// Deserializes YAML, reporting both the key path (`appservice.port`) and the line.
///
/// Without the parser's source snippet: it quotes the lines around the error, and in a
/// registration or config those hold the tokens and the database password.
pub(crate) fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let mut key = String::new();
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            key = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| YamlError { key, message: e.to_string() })
}

/// The errors in `err`'s chain: itself, then each cause.
pub(crate) fn error_sources<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// An error's message and its causes', `: `-separated; a cause whose text the message already
/// holds (an error that prints its source, or forwards to it) is not repeated.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut shown = err.to_string();
    for cause in error_sources(err).skip(1) {
        let text = cause.to_string();
        if !shown.contains(&text) {
            shown.push_str(": ");
            shown.push_str(&text);
        }
    }
    shown
}

/// Polls `fut` up to `polls` times with a waker that does nothing, waiting `wait` after each
/// poll that leaves it pending (a zero `wait` yields once instead), and says whether it
/// finished. Tests drop the future afterwards, to cut it off at that point, as hyper drops a
/// request's future when its client goes away.
/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A random ID of `len` letters and digits, from the operating system's random source.
pub(crate) fn random_id(len: usize) -> String {
    crate::secret::Secret::generate(len).expose().to_owned()
}

#[cfg(test)]
pub(crate) async fn poll_times<F: std::future::Future + Unpin>(
    fut: &mut F,
    polls: usize,
    wait: std::time::Duration,
) -> bool {
    for _ in 0..polls {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if std::pin::Pin::new(&mut *fut).poll(&mut cx).is_ready() {
            return true;
        }
        if wait.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(wait).await;
        }
    }
    false
}

/// A future polled in place by the one awaiting it and, should that one be dropped first,
/// finished by a task of its own: work that must not stop halfway (a commit and the hand-over
/// of its outcome) without the cost of a task in the common case.
pub(crate) struct RunToEnd(Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>);

impl RunToEnd {
    pub(crate) fn new(work: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self(Some(Box::pin(work)))
    }
}

impl std::future::Future for RunToEnd {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if let Some(work) = self.0.as_mut() {
            std::task::ready!(work.as_mut().poll(cx));
            self.0 = None;
        }
        std::task::Poll::Ready(())
    }
}

impl Drop for RunToEnd {
    fn drop(&mut self) {
        if let Some(work) = self.0.take() {
            // Outside a runtime (it is shutting down) the work is dropped: what it committed is
            // found in the database at the next start.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(work);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::range_in;

    #[test]
    fn slices_are_found_and_foreign_strings_are_not() {
        let whole = "hello world";
        assert_eq!(range_in(whole.as_bytes(), &whole.as_bytes()[6..]), Some(6..11));
        assert_eq!(range_in(whole.as_bytes(), b"world"), None);
    }
}

//! [`CacheFirst`]: a lookup or an update that the state cache may answer or make unneeded,
//! with an `.ignore_cache()` option.

use std::{fmt, future::IntoFuture};

use futures_util::future::BoxFuture;

use super::Result;

/// The work of a [`CacheFirst`], told whether to ignore the cache.
type Run<'a, T> = Box<dyn FnOnce(bool) -> BoxFuture<'a, Result<T>> + Send + 'a>;

/// An action that consults the state cache first, done when awaited: a cache hit makes no
/// request (a lookup answers from the cache, an update the cache says was made is skipped).
/// `.ignore_cache()` asks the homeserver (or sends the update) whatever the cache says, and
/// puts the answer in the cache.
///
/// Built by [`Intent::power_levels`], [`Intent::member`], [`Intent::display_name`],
/// [`Intent::room_avatar_url`] and [`Intent::members`].
///
/// ```no_run
/// # async fn example(
/// #     bot: mxbridge::intent::Intent,
/// #     room_id: &ruma::RoomId,
/// #     user_id: &ruma::UserId,
/// # ) -> mxbridge::intent::Result<()> {
/// let cached = bot.display_name(room_id, user_id).await?;
/// let fresh = bot.display_name(room_id, user_id).ignore_cache().await?;
/// # Ok(()) }
/// ```
///
/// [`Intent::power_levels`]: super::Intent::power_levels
/// [`Intent::member`]: super::Intent::member
/// [`Intent::display_name`]: super::Intent::display_name
/// [`Intent::room_avatar_url`]: super::Intent::room_avatar_url
/// [`Intent::members`]: super::Intent::members
#[must_use = "nothing happens until the lookup is awaited"]
pub struct CacheFirst<'a, T> {
    ignore_cache: bool,
    run: Run<'a, T>,
}

impl<'a, T> CacheFirst<'a, T> {
    pub(super) fn new<F>(run: F) -> Self
    where
        F: FnOnce(bool) -> BoxFuture<'a, Result<T>> + Send + 'a,
    {
        Self { ignore_cache: false, run: Box::new(run) }
    }

    /// Asks the homeserver whatever the cache says, and caches its answer.
    pub fn ignore_cache(self) -> Self {
        self.ignore_cache_if(true)
    }

    /// [`CacheFirst::ignore_cache`] when `ignore` is true.
    pub fn ignore_cache_if(mut self, ignore: bool) -> Self {
        self.ignore_cache = ignore;
        self
    }
}

impl<T> fmt::Debug for CacheFirst<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheFirst").field("ignore_cache", &self.ignore_cache).finish()
    }
}

impl<'a, T: 'a> IntoFuture for CacheFirst<'a, T> {
    type Output = Result<T>;
    type IntoFuture = BoxFuture<'a, Result<T>>;

    fn into_future(self) -> Self::IntoFuture {
        (self.run)(self.ignore_cache)
    }
}

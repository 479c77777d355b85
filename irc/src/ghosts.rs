//! Which ghost an IRC nick stands for.
//!
//! A ghost is a person, not a nick: the first person seen with a nick gets the ghost named
//! after it; a nick change (`NICK`) keeps the ghost and only renames it (the server says it is
//! the same connection). A nick seen later with another `user@host` than its last holder is
//! someone else, and gets a ghost of its own (`nick.` and a digest of the `user@host`), so the
//! newcomer never inherits the first person's ghost and its history. Without a `user@host`
//! (a name list without `userhost-in-names`) the nick's current holder is assumed.

use std::{collections::BTreeMap, sync::Mutex};

use mxbridge::{BridgeResult, RemoteSender, RemoteUserId, Store};
use serde::{Deserialize, Serialize};

use crate::proto::casefold;

const NAMESPACE: &str = "irc_nick";

/// The holder of a nick, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    /// The ghost's remote ID.
    ghost: String,
    /// The holder's `user@host`, when known.
    userhost: Option<String>,
    /// The nick as the holder writes it.
    #[serde(default)]
    nick: String,
}

/// Nicks and their ghosts, kept in memory and in the store.
#[derive(Debug, Default)]
pub(crate) struct Ghosts {
    holders: Mutex<BTreeMap<String, Holder>>,
    /// The nick each ghost goes by now.
    current: Mutex<BTreeMap<String, String>>,
}

impl Ghosts {
    /// The ghost of `nick` as seen with `userhost`.
    pub(crate) async fn sender(
        &self,
        store: &Store,
        nick: &str,
        userhost: Option<&str>,
    ) -> BridgeResult<RemoteSender> {
        let key = casefold(nick);
        let known = self.holders.lock().expect("lock").get(&key).cloned();
        let known = match known {
            Some(h) => Some(h),
            None => store.kv_get_json::<Holder>(NAMESPACE, &key).await?,
        };
        let holder = match known {
            Some(h)
                if userhost.is_none()
                    || h.userhost.is_none()
                    || h.userhost.as_deref() == userhost =>
            {
                let userhost = h.userhost.clone().or_else(|| userhost.map(str::to_owned));
                Holder { ghost: h.ghost, userhost, nick: nick.to_owned() }
            }
            // Someone else has the nick now.
            Some(_) => Holder {
                ghost: format!("{key}.{}", digest(userhost.unwrap_or_default())),
                userhost: userhost.map(str::to_owned),
                nick: nick.to_owned(),
            },
            None => Holder {
                ghost: key.clone(),
                userhost: userhost.map(str::to_owned),
                nick: nick.to_owned(),
            },
        };
        self.remember(store, &key, holder.clone()).await?;
        Ok(RemoteSender::named(RemoteUserId(holder.ghost), nick))
    }

    /// `old` is now called `new` (the same person): the ghost follows.
    pub(crate) async fn rename(
        &self,
        store: &Store,
        old: &str,
        new: &str,
        userhost: Option<&str>,
    ) -> BridgeResult<RemoteSender> {
        let old_sender = self.sender(store, old, userhost).await?;
        let holder = Holder {
            ghost: old_sender.id.0.clone(),
            userhost: self
                .holders
                .lock()
                .expect("lock")
                .get(&casefold(old))
                .and_then(|h| h.userhost.clone()),
            nick: new.to_owned(),
        };
        self.remember(store, &casefold(new), holder).await?;
        Ok(RemoteSender::named(old_sender.id, new))
    }

    async fn remember(&self, store: &Store, key: &str, holder: Holder) -> BridgeResult {
        self.current.lock().expect("lock").insert(holder.ghost.clone(), holder.nick.clone());
        let changed = self.holders.lock().expect("lock").insert(key.to_owned(), holder.clone());
        if changed.as_ref() != Some(&holder) {
            store.kv_put_json(NAMESPACE, key, &holder).await?;
        }
        Ok(())
    }

    /// The ghost of the nick's current holder, as far as this process has seen it.
    pub(crate) fn ghost_of(&self, nick: &str) -> Option<String> {
        self.holders.lock().expect("lock").get(&casefold(nick)).map(|h| h.ghost.clone())
    }

    /// The nick of the first known holder for which `is_ghost` says yes (a ghost's user ID).
    pub(crate) fn find_nick(&self, is_ghost: impl Fn(&str) -> bool) -> Option<String> {
        let current = self.current.lock().expect("lock");
        current.iter().find(|(ghost, _)| is_ghost(ghost)).map(|(_, nick)| nick.clone())
    }
}

/// Six hex digits of FNV-1a: short, stable across versions, enough to tell holders apart.
fn digest(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", h & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &std::path::Path) -> Store {
        let config = mxbridge::config::DatabaseConfig {
            url: format!("sqlite://{}/s.db", dir.display()),
            ..Default::default()
        };
        Store::connect(&config).await.unwrap()
    }

    #[tokio::test]
    async fn a_renamed_nick_keeps_its_ghost_and_a_reused_nick_gets_another() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let ghosts = Ghosts::default();
        let dave = ghosts.sender(&store, "Dave", Some("~dave@host")).await.unwrap();
        assert_eq!(dave.id.as_str(), "dave");
        assert_eq!(dave.profile.displayname.as_deref(), Some("Dave"));
        // Seen without user@host (a name list): still Dave.
        assert_eq!(ghosts.sender(&store, "dave", None).await.unwrap().id, dave.id);

        let renamed = ghosts.rename(&store, "Dave", "Dave2", Some("~dave@host")).await.unwrap();
        assert_eq!(renamed.id, dave.id);
        assert_eq!(ghosts.find_nick(|g| g == "dave").as_deref(), Some("Dave2"));
        assert_eq!(renamed.profile.displayname.as_deref(), Some("Dave2"));
        assert_eq!(ghosts.sender(&store, "dave2", Some("~dave@host")).await.unwrap().id, dave.id);

        // Eve takes the free nick: a ghost of her own, stable for her.
        let eve = ghosts.sender(&store, "Dave", Some("~eve@host")).await.unwrap();
        assert_ne!(eve.id, dave.id);
        assert!(eve.id.as_str().starts_with("dave."));
        assert_eq!(ghosts.sender(&store, "Dave", Some("~eve@host")).await.unwrap().id, eve.id);

        // After a restart the store remembers both.
        let again = Ghosts::default();
        assert_eq!(again.sender(&store, "dave2", Some("~dave@host")).await.unwrap().id, dave.id);
        assert_eq!(again.sender(&store, "dave", Some("~eve@host")).await.unwrap().id, eve.id);
    }
}

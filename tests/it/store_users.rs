//! Conformance of the users-and-logins tables, run on both backends by `store.rs`'s suite.

use mxbridge::{
    PortalKey, RemoteLoginId, Store,
    login::{LoginState, NewLogin},
    store::AddLogin,
};
use ruma::{room_id, user_id};
use serde_json::json;

fn new_login(id: &str, name: &str) -> NewLogin {
    NewLogin { id: id.into(), remote_name: name.into(), metadata: json!({"token": id}) }
}

pub async fn users_and_logins(store: Store) {
    let alice = user_id!("@alice:x");
    let bob = user_id!("@bob:x");
    assert_eq!(store.user(alice).await.unwrap(), None);
    store.ensure_user(alice).await.unwrap();
    store.ensure_user(alice).await.unwrap();
    let row = store.user(alice).await.unwrap().unwrap();
    assert_eq!((row.management_room, row.double_puppet_token), (None, None));
    store.set_management_room(alice, Some(room_id!("!dm:x"))).await.unwrap();
    store.set_double_puppet_token(bob, Some(&mxbridge::Secret::new("tok"))).await.unwrap();
    assert_eq!(
        store.user(alice).await.unwrap().unwrap().management_room.as_deref(),
        Some(room_id!("!dm:x"))
    );
    let bob_row = store.user(bob).await.unwrap().unwrap();
    assert_eq!(bob_row.double_puppet_token.unwrap().expose(), "tok");

    // Several logins per user, up to the maximum; the same account again replaces its row.
    let add = |user, id: &'static str, max| {
        let store = store.clone();
        async move {
            store.add_login(user, &new_login(id, id), LoginState::Connecting, max).await.unwrap()
        }
    };
    assert_eq!(add(alice, "a1", 2).await, AddLogin::Added);
    assert_eq!(add(alice, "a2", 2).await, AddLogin::Added);
    assert_eq!(add(alice, "a3", 2).await, AddLogin::TooMany);
    assert_eq!(add(alice, "a2", 2).await, AddLogin::Replaced);
    assert_eq!(add(bob, "a1", 5).await, AddLogin::OtherUser(alice.to_owned()));
    assert_eq!(add(bob, "b1", 5).await, AddLogin::Added);
    let ids = |logins: Vec<mxbridge::login::UserLogin>| {
        logins.into_iter().map(|l| l.id.0).collect::<Vec<_>>()
    };
    assert_eq!(ids(store.logins_of(alice).await.unwrap()), ["a1", "a2"]);
    assert_eq!(ids(store.all_logins().await.unwrap()), ["a1", "a2", "b1"]);
    let a1 = store.login(&"a1".into()).await.unwrap().unwrap();
    assert_eq!(a1.user_id, alice);
    assert_eq!(a1.metadata, json!({"token": "a1"}));
    assert_eq!(a1.state, LoginState::Connecting);

    // States, with their reason; the old state comes back.
    let old = store
        .set_login_state(&"a1".into(), LoginState::BadCredentials, Some("password changed"))
        .await
        .unwrap();
    assert_eq!(old, Some(LoginState::Connecting));
    let a1 = store.login(&"a1".into()).await.unwrap().unwrap();
    assert_eq!(
        (a1.state, a1.state_reason.as_deref()),
        (LoginState::BadCredentials, Some("password changed"))
    );
    assert_eq!(
        store.set_login_state(&"zz".into(), LoginState::Connected, None).await.unwrap(),
        None
    );
    assert!(store.update_login(&"a1".into(), "Alice A", &json!([1])).await.unwrap());
    let a1 = store.login(&"a1".into()).await.unwrap().unwrap();
    assert_eq!((a1.remote_name.as_str(), a1.metadata), ("Alice A", json!([1])));

    // Portal membership and relays.
    let chat = PortalKey::shared("chat");
    let dm = PortalKey::for_login("dm", RemoteLoginId::from("a1"));
    store.add_login_to_portal(&"a1".into(), &chat).await.unwrap();
    store.add_login_to_portal(&"a1".into(), &chat).await.unwrap();
    store.add_login_to_portal(&"a1".into(), &dm).await.unwrap();
    store.add_login_to_portal(&"b1".into(), &chat).await.unwrap();
    assert_eq!(ids(store.logins_in_portal(&chat).await.unwrap()), ["a1", "b1"]);
    assert_eq!(ids(store.user_logins_in_portal(alice, &chat).await.unwrap()), ["a1"]);
    assert!(store.user_logins_in_portal(alice, &PortalKey::shared("dm")).await.unwrap().is_empty());
    assert_eq!(store.portals_of_login(&"a1".into()).await.unwrap(), [chat.clone(), dm.clone()]);
    assert_eq!(store.portal_relay(&chat).await.unwrap(), None);
    store.set_portal_relay(&chat, Some(&"b1".into())).await.unwrap();
    store.set_portal_relay(&dm, Some(&"a1".into())).await.unwrap();
    assert_eq!(store.portal_relay(&chat).await.unwrap().unwrap().id.as_str(), "b1");
    store.set_portal_relay(&chat, Some(&"a2".into())).await.unwrap();
    assert_eq!(store.portal_relay(&chat).await.unwrap().unwrap().id.as_str(), "a2");
    store.set_portal_relay(&chat, None).await.unwrap();
    assert_eq!(store.portal_relay(&chat).await.unwrap(), None);
    assert!(store.remove_login_from_portal(&"b1".into(), &chat).await.unwrap());
    assert!(!store.remove_login_from_portal(&"b1".into(), &chat).await.unwrap());

    // A login's space, and the portals that no login is in.
    assert_eq!(store.login_space(&"a1".into()).await.unwrap(), None);
    let space = ruma::room_id!("!space:localhost");
    assert!(store.set_login_space(&"a1".into(), space).await.unwrap());
    assert!(!store.set_login_space(&"zz".into(), space).await.unwrap());
    assert_eq!(store.login_space(&"a1".into()).await.unwrap().as_deref(), Some(space));
    let orphan = PortalKey::shared("orphan");
    let lost_dm = PortalKey::for_login("dm2", RemoteLoginId::from("gone"));
    let roomless = PortalKey::shared("roomless");
    for (n, key) in [&chat, &dm, &orphan, &lost_dm, &roomless].into_iter().enumerate() {
        let room_id = (key != &roomless)
            .then(|| ruma::OwnedRoomId::try_from(format!("!p{n}:localhost")).unwrap());
        let row = mxbridge::store::PortalRow {
            key: key.clone(),
            room_id,
            name: None,
            topic: None,
            avatar_url: None,
            metadata: None,
        };
        store.upsert_portal(&row).await.unwrap();
    }
    assert_eq!(store.portals_without_logins().await.unwrap(), [lost_dm.clone(), orphan.clone()]);
    store.forget_portal_logins(&dm).await.unwrap();
    assert!(store.logins_in_portal(&dm).await.unwrap().is_empty());
    assert_eq!(store.portal_relay(&dm).await.unwrap(), None);
    // Its receiver is a stored login: still not without logins.
    assert_eq!(store.portals_without_logins().await.unwrap(), [lost_dm, orphan]);
    store.set_portal_relay(&dm, Some(&"a1".into())).await.unwrap();

    // Deleting a login forgets its portals and the relays it was.
    assert!(store.delete_login(&"a1".into()).await.unwrap());
    assert!(!store.delete_login(&"a1".into()).await.unwrap());
    assert!(store.logins_in_portal(&chat).await.unwrap().is_empty());
    assert_eq!(store.portal_relay(&dm).await.unwrap(), None);
    assert_eq!(ids(store.logins_of(alice).await.unwrap()), ["a2"]);
    // A freed place can be taken again.
    assert_eq!(add(alice, "a3", 2).await, AddLogin::Added);
}

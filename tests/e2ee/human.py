"""A human with an encrypting Matrix client (matrix-nio with olm), driven line by line.

matrix-nio 0.26 does its cryptography with vodozemac; every message it decrypts for a
`wait_message` is decrypted a second time with libolm (python-olm), so two implementations of
megolm read what a bridge sends.

The end-to-end encryption tests run this as a child process with the venv's python that
`scripts/nio.sh python` prints:

    python tests/e2ee/human.py --homeserver URL --user @alice:localhost --password PW --store DIR

It logs in (or, when DIR holds a session from an earlier run, takes that device up again with
its olm account from DIR), uploads its device keys, syncs once, and prints one JSON line:
`{"ok": true, "ready": true, "user_id": ..., "device_id": ...}`. Then it reads one JSON command a
line on stdin and answers each with one JSON line on stdout, `{"ok": true, ...}` or
`{"ok": false, "error": "..."}`. A sync loop runs between commands. Logs go to stderr.

Every device is trusted (marked verified) before a send, so room keys go to devices nobody
verified, such as a bridge's.

Commands (`"cmd"` names one; the other keys are its arguments):

    whoami                             user_id, device_id, curve25519, ed25519
    create_room invite=[ids] name=?    an encrypted room (m.megolm.v1.aes-sha2 in its initial
                                       state) -> room_id
    invite room_id user_id
    wait_invite room_id=? timeout=30   -> room_id of a pending invite
    join room_id                       -> room_id
    wait_member room_id user_id membership="join" timeout=30
                                       until this client's synced view shows that membership
    send_text room_id body msgtype="m.text"
                                       -> event_id (encrypted when the room is)
    send_image room_id path mimetype="image/png" name=?
                                       encrypted upload, then an m.image with `file`
                                       -> event_id, url, sha256 (of the plaintext, hex)
    wait_message sender room_id=? body=? msgtype=? timeout=30
                                       the next message from sender not returned before; an
                                       image is downloaded and decrypted: sha256 of the
                                       plaintext. Fields: event_id, room_id, sender, msgtype,
                                       body, decrypted (arrived as m.room.encrypted),
                                       verified (the sender's device is verified), libolm
                                       (decrypted a second time by libolm, the same),
                                       encrypted_file (media sent as `file`), sha256, size.
                                       A timeout answers ok=false with the undecryptable
                                       events seen.
    session room_id                    this client's outbound megolm session in the room:
                                       session_id, shared_with ([user, device] pairs)
    rotate_session room_id             forgets the outbound megolm session, so the next send
                                       makes a new one and shares its key again -> discarded
                                       (the old session_id, or null)
    messages                           every message seen, in order
    undecryptable                      events that could not be decrypted (yet)
    room_keys                          to-device m.room_key events received: count,
                                       forwarded, by_sender, sessions
    quit
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import os
import sys
import time
from typing import Any
from urllib.parse import quote

import olm
from nio import (
    AsyncClient,
    AsyncClientConfig,
    DownloadError,
    Event,
    ForwardedRoomKeyEvent,
    JoinError,
    LoginResponse,
    MatrixRoom,
    MegolmEvent,
    RoomCreateError,
    RoomEncryptedMedia,
    RoomInviteError,
    RoomKeyEvent,
    RoomMessage,
    RoomMessageMedia,
    RoomSendResponse,
    SyncError,
    UploadResponse,
)
from nio.crypto import decrypt_attachment
from nio.exceptions import EncryptionError

log = logging.getLogger("human")


class CommandError(Exception):
    """A command that failed; its message is the answer's `error`."""


class Human:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        # Messages in arrival order; dicts as `wait_message` answers them.
        self.messages: list[dict[str, Any]] = []
        # Event ids already answered by `wait_message`.
        self.returned: set[str] = set()
        # Undecryptable events by event id, tried again when a room key arrives.
        self.pending: dict[str, MegolmEvent] = {}
        self.room_keys: list[dict[str, Any]] = []
        # How many room keys had arrived when the pending events were last retried.
        self.keys_tried = 0
        self.synced = asyncio.Condition()
        self.sync_count = 0
        self.last_sync_error: str | None = None
        client.add_event_callback(self.on_event, Event)
        client.add_to_device_callback(self.on_to_device, (RoomKeyEvent,))

    # ------------------------------------------------------------- events ---

    async def on_event(self, room: MatrixRoom, event: Event) -> None:
        if isinstance(event, MegolmEvent):
            event.room_id = room.room_id
            self.pending[event.event_id] = event
            self.record_undecryptable(event, room.room_id, "no room key yet")
        elif isinstance(event, RoomMessage):
            self.record(event, room.room_id)

    def record_undecryptable(self, event: MegolmEvent, room_id: str, reason: str) -> None:
        entry = {
            "event_id": event.event_id,
            "room_id": room_id,
            "sender": event.sender,
            "undecryptable": True,
            "session_id": event.session_id,
            "reason": reason,
        }
        for n, seen in enumerate(self.messages):
            if seen["event_id"] == event.event_id:
                self.messages[n] = entry
                return
        self.messages.append(entry)

    def record(self, event: RoomMessage, room_id: str) -> None:
        source = event.source.get("content", {})
        entry: dict[str, Any] = {
            "event_id": event.event_id,
            "room_id": room_id,
            "sender": event.sender,
            "msgtype": source.get("msgtype"),
            "body": source.get("body"),
            "decrypted": bool(getattr(event, "decrypted", False)),
            # The sending device's keys were verified (never for a bridge's ghosts).
            "verified": bool(getattr(event, "verified", False)),
            "encrypted_file": isinstance(event, RoomEncryptedMedia),
        }
        if isinstance(event, RoomEncryptedMedia):
            entry["media"] = {
                "url": event.url,
                "key": event.key.get("k"),
                "sha256": event.hashes.get("sha256"),
                "iv": event.iv,
            }
            entry["mimetype"] = event.mimetype
        elif isinstance(event, RoomMessageMedia):
            entry["media"] = {"url": event.url}
            entry["mimetype"] = source.get("info", {}).get("mimetype")
        # A late decryption replaces the undecryptable entry where it stood.
        for n, seen in enumerate(self.messages):
            if seen["event_id"] == event.event_id:
                self.messages[n] = entry
                return
        self.messages.append(entry)

    async def on_to_device(self, event: RoomKeyEvent) -> None:
        self.room_keys.append(
            {
                "sender": event.sender,
                "room_id": event.room_id,
                "session_id": event.session_id,
                "forwarded": isinstance(event, ForwardedRoomKeyEvent),
            }
        )

    def retry_pending(self) -> None:
        # Only a newly received room key can make a pending event decryptable.
        if len(self.room_keys) == self.keys_tried:
            return
        self.keys_tried = len(self.room_keys)
        for event_id, event in list(self.pending.items()):
            try:
                decrypted = self.client.decrypt_event(event)
            except EncryptionError as e:
                self.record_undecryptable(event, event.room_id, str(e))
                continue
            del self.pending[event_id]
            if isinstance(decrypted, RoomMessage):
                decrypted.decrypted = True
                self.record(decrypted, event.room_id)

    # --------------------------------------------------------------- sync ---

    async def sync_once(self, first: bool) -> None:
        c = self.client
        resp = await c.sync(timeout=0 if first else 1000, full_state=first or None)
        if isinstance(resp, SyncError):
            self.last_sync_error = resp.message
            log.warning("sync failed: %s", resp.message)
            await asyncio.sleep(0.5)
            return
        await c.send_to_device_messages()
        if c.should_upload_keys:
            await c.keys_upload()
        if c.should_query_keys:
            await c.keys_query()
        if c.should_claim_keys:
            await c.keys_claim(c.get_users_for_key_claiming())
        self.retry_pending()
        async with self.synced:
            self.sync_count += 1
            self.synced.notify_all()

    async def sync_loop(self) -> None:
        while True:
            try:
                await self.sync_once(False)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep syncing: a command reports what it misses
                self.last_sync_error = repr(e)
                log.exception("sync loop")
                await asyncio.sleep(0.5)

    async def until(self, what: str, timeout: float, check) -> Any:
        """Waits (through syncs) until `check()` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                extra = f" (last sync error: {self.last_sync_error})" if self.last_sync_error else ""
                raise CommandError(f"timed out after {timeout}s waiting for {what}{extra}")
            async with self.synced:
                try:
                    await asyncio.wait_for(self.synced.wait(), min(left, 1.0))
                except asyncio.TimeoutError:
                    pass

    # ----------------------------------------------------------- commands ---

    def trust_all(self) -> None:
        for device in self.client.device_store:
            if not device.verified and device.device_id != self.client.device_id:
                self.client.verify_device(device)

    async def cmd_whoami(self, _a: dict) -> dict:
        olm = self.client.olm
        keys = olm.account.identity_keys if olm else {}
        return {
            "user_id": self.client.user_id,
            "device_id": self.client.device_id,
            "curve25519": keys.get("curve25519"),
            "ed25519": keys.get("ed25519"),
        }

    async def cmd_create_room(self, a: dict) -> dict:
        resp = await self.client.room_create(
            name=a.get("name"),
            invite=a.get("invite", []),
            initial_state=[
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ],
        )
        if isinstance(resp, RoomCreateError):
            raise CommandError(f"createRoom: {resp.message}")
        room_id = resp.room_id
        await self.until(
            f"room {room_id} to sync as encrypted",
            30,
            lambda: room_id in self.client.rooms and self.client.rooms[room_id].encrypted,
        )
        return {"room_id": room_id}

    async def cmd_invite(self, a: dict) -> dict:
        resp = await self.client.room_invite(need(a, "room_id"), need(a, "user_id"))
        if isinstance(resp, RoomInviteError):
            raise CommandError(f"invite: {resp.message}")
        return {}

    async def cmd_wait_invite(self, a: dict) -> dict:
        wanted = a.get("room_id")

        def found():
            rooms = self.client.invited_rooms
            if wanted:
                return wanted if wanted in rooms else None
            return next(iter(rooms), None)

        room_id = await self.until("an invite", float(a.get("timeout", 30)), found)
        return {"room_id": room_id}

    async def cmd_join(self, a: dict) -> dict:
        room_id = need(a, "room_id")
        resp = await self.client.join(room_id)
        if isinstance(resp, JoinError):
            raise CommandError(f"join: {resp.message}")
        await self.until(f"room {room_id} to sync", 30, lambda: room_id in self.client.rooms)
        return {"room_id": resp.room_id}

    async def cmd_wait_member(self, a: dict) -> dict:
        room_id, user_id = need(a, "room_id"), need(a, "user_id")
        membership = a.get("membership", "join")
        if membership not in ("join", "invite", "leave"):
            raise CommandError(f"membership must be join, invite or leave, not {membership!r}")

        def state():
            room = self.client.rooms.get(room_id)
            if room is None:
                return None
            if membership == "join":
                return user_id in room.users and user_id not in room.invited_users
            if membership == "invite":
                return user_id in room.invited_users
            return user_id not in room.users

        await self.until(
            f"{user_id} to be {membership} in {room_id}", float(a.get("timeout", 30)), state
        )
        return {}

    async def send(self, room_id: str, content: dict) -> str:
        if room_id not in self.client.rooms:
            raise CommandError(f"not in room {room_id}")
        if self.client.should_query_keys:
            await self.client.keys_query()
        self.trust_all()
        resp = await self.client.room_send(
            room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        if not isinstance(resp, RoomSendResponse):
            raise CommandError(f"send: {getattr(resp, 'message', resp)}")
        return resp.event_id

    async def cmd_send_text(self, a: dict) -> dict:
        content = {"msgtype": a.get("msgtype", "m.text"), "body": need(a, "body")}
        return {"event_id": await self.send(need(a, "room_id"), content)}

    async def cmd_send_image(self, a: dict) -> dict:
        path = need(a, "path")
        with open(path, "rb") as f:
            data = f.read()
        mimetype = a.get("mimetype", "image/png")
        name = a.get("name") or os.path.basename(path)
        resp, keys = await self.client.upload(
            io.BytesIO(data), content_type=mimetype, filename=name, encrypt=True, filesize=len(data)
        )
        if not isinstance(resp, UploadResponse) or keys is None:
            raise CommandError(f"upload: {getattr(resp, 'message', resp)}")
        content = {
            "msgtype": "m.image",
            "body": name,
            "info": {"mimetype": mimetype, "size": len(data)},
            "file": {
                "url": resp.content_uri,
                "key": keys["key"],
                "iv": keys["iv"],
                "hashes": keys["hashes"],
                "v": keys["v"],
                "mimetype": mimetype,
            },
        }
        event_id = await self.send(need(a, "room_id"), content)
        return {
            "event_id": event_id,
            "url": resp.content_uri,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }

    async def fetch_media(self, entry: dict) -> dict:
        media = entry.pop("media", None)
        if not media:
            return entry
        resp = await self.client.download(mxc=media["url"])
        if isinstance(resp, DownloadError):
            raise CommandError(f"download {media['url']}: {resp.message}")
        data = resp.body
        if entry["encrypted_file"]:
            try:
                data = decrypt_attachment(data, media["key"], media["sha256"], media["iv"])
            except EncryptionError as e:
                raise CommandError(f"decrypting {media['url']}: {e}")
        entry["url"] = media["url"]
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entry["size"] = len(data)
        return entry

    async def cmd_wait_message(self, a: dict) -> dict:
        sender = need(a, "sender")
        room_id, body, msgtype = a.get("room_id"), a.get("body"), a.get("msgtype")

        def found():
            for m in self.messages:
                if m["event_id"] in self.returned or m.get("undecryptable"):
                    continue
                if m["sender"] != sender or (room_id and m["room_id"] != room_id):
                    continue
                if (body is not None and m["body"] != body) or (
                    msgtype is not None and m["msgtype"] != msgtype
                ):
                    continue
                return m
            return None

        try:
            m = await self.until(f"a message from {sender}", float(a.get("timeout", 30)), found)
        except CommandError as e:
            stuck = [m for m in self.messages if m.get("undecryptable")]
            raise CommandError(f"{e}; undecryptable: {json.dumps(stuck)}")
        self.returned.add(m["event_id"])
        entry = dict(m)
        if entry["decrypted"]:
            entry["libolm"] = await self.check_with_libolm(entry)
        return await self.fetch_media(entry)

    async def check_with_libolm(self, entry: dict) -> bool:
        """Decrypts the event a second time with libolm (python-olm), from the megolm session
        nio (vodozemac) holds, and fails unless both agree: two implementations read it."""
        # Not room_get_event: nio decrypts what that returns.
        path = "/_matrix/client/v3/rooms/{}/event/{}".format(
            quote(entry["room_id"], safe=""), quote(entry["event_id"], safe="")
        )
        resp = await self.client.send(
            "GET", path, headers={"Authorization": f"Bearer {self.client.access_token}"}
        )
        body = await resp.json()
        raw = MegolmEvent.from_dict(body) if resp.status == 200 else None
        if not isinstance(raw, MegolmEvent):
            raise CommandError(f"fetching {entry['event_id']} as ciphertext: {resp.status} {body}")
        session = self.client.olm.inbound_group_store.get(
            entry["room_id"], raw.sender_key, raw.session_id
        )
        if session is None:
            raise CommandError(f"no megolm session {raw.session_id} after decrypting with it")
        exported = session.export_session(session.first_known_index)
        try:
            plaintext, _index = olm.InboundGroupSession.import_session(exported).decrypt(
                raw.ciphertext
            )
        except olm.OlmGroupSessionError as e:
            raise CommandError(f"libolm cannot decrypt {entry['event_id']}: {e}")
        content = json.loads(plaintext).get("content", {})
        if (content.get("body"), content.get("msgtype")) != (entry["body"], entry["msgtype"]):
            raise CommandError(
                f"libolm reads {entry['event_id']} as {content!r}, nio as {entry['body']!r}"
            )
        return True

    async def cmd_session(self, a: dict) -> dict:
        room_id = need(a, "room_id")
        session = self.client.olm.outbound_group_sessions.get(room_id)
        if session is None:
            raise CommandError(f"no outbound megolm session in {room_id} (nothing sent yet)")
        return {
            "session_id": session.id,
            "shared_with": sorted([u, d] for u, d in session.users_shared_with),
        }

    async def cmd_rotate_session(self, a: dict) -> dict:
        old = self.client.olm.outbound_group_sessions.pop(need(a, "room_id"), None)
        return {"discarded": old.id if old is not None else None}

    async def cmd_messages(self, _a: dict) -> dict:
        return {"messages": [{k: v for k, v in m.items() if k != "media"} for m in self.messages]}

    async def cmd_undecryptable(self, _a: dict) -> dict:
        return {"events": [m for m in self.messages if m.get("undecryptable")]}

    async def cmd_room_keys(self, _a: dict) -> dict:
        by_sender: dict[str, int] = {}
        for k in self.room_keys:
            by_sender[k["sender"]] = by_sender.get(k["sender"], 0) + 1
        return {
            "count": len(self.room_keys),
            "forwarded": sum(1 for k in self.room_keys if k["forwarded"]),
            "by_sender": by_sender,
            "sessions": self.room_keys,
        }


def need(a: dict, key: str) -> Any:
    if key not in a:
        raise CommandError(f"missing argument {key!r}")
    return a[key]


def answer(value: dict) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def login(args) -> AsyncClient:
    os.makedirs(args.store, exist_ok=True)
    session_file = os.path.join(args.store, "session.json")
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    if os.path.exists(session_file):
        with open(session_file) as f:
            s = json.load(f)
        client = AsyncClient(args.homeserver, s["user_id"], s["device_id"], args.store, config)
        # Loads the olm account and sessions kept in the store.
        client.restore_login(s["user_id"], s["device_id"], s["access_token"])
    else:
        client = AsyncClient(args.homeserver, args.user, store_path=args.store, config=config)
        resp = await client.login(args.password, device_name="mxbridge e2ee test")
        if not isinstance(resp, LoginResponse):
            raise CommandError(f"login as {args.user}: {getattr(resp, 'message', resp)}")
        with open(session_file, "w") as f:
            json.dump(
                {
                    "user_id": resp.user_id,
                    "device_id": resp.device_id,
                    "access_token": resp.access_token,
                },
                f,
            )
    if client.olm is None:
        raise CommandError("the olm machine did not load (is python-olm installed?)")
    if client.should_upload_keys:
        resp = await client.keys_upload()
        if not hasattr(resp, "signed_curve25519_count"):
            raise CommandError(f"keys upload: {getattr(resp, 'message', resp)}")
    return client


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--homeserver", required=True)
    p.add_argument("--user", required=True, help="full user id, e.g. @alice:localhost")
    p.add_argument("--password", required=True)
    p.add_argument("--store", required=True, help="directory for the olm store and session")
    args = p.parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("MXB_NIO_LOG", "WARNING").upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )

    try:
        client = await login(args)
    except Exception as e:
        answer({"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    human = Human(client)
    try:
        await human.sync_once(True)
    except Exception as e:
        answer({"ok": False, "error": f"first sync: {type(e).__name__}: {e}"})
        await client.close()
        return 1
    syncing = asyncio.create_task(human.sync_loop())
    answer({"ok": True, "ready": True, "user_id": client.user_id, "device_id": client.device_id})

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        try:
            a = json.loads(line)
            if not isinstance(a, dict) or not isinstance(a.get("cmd"), str):
                raise CommandError('a command is a JSON object with a string "cmd"')
            if a["cmd"] == "quit":
                answer({"ok": True})
                break
            handler = getattr(human, "cmd_" + a["cmd"], None)
            if handler is None:
                raise CommandError(f"unknown command {a['cmd']!r}")
            answer({"ok": True, **(await handler(a))})
        except (CommandError, json.JSONDecodeError) as e:
            answer({"ok": False, "error": str(e)})
        except Exception as e:
            log.exception("command failed")
            answer({"ok": False, "error": f"{type(e).__name__}: {e}"})
    syncing.cancel()
    try:
        await syncing
    except asyncio.CancelledError:
        pass
    await client.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

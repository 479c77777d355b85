"""IRC bridges side by side: one Matrix user and one IRC user talk through a bridge in one
channel; throughput both ways at steady state (order checked) and the latency of single
messages. Standard library only.

    irc_bench.py setup-mxbridge HS TOKEN IRC_PORT CHANNEL NICK      -> prints the room ID
    irc_bench.py setup-heisenbridge HS TOKEN IRC_PORT CHANNEL NICK  -> prints the room ID
    irc_bench.py run HS TOKEN ROOM IRC_PORT CHANNEL BRIDGE_NICK N_I2M N_M2I LATENCY_SAMPLES GAP_S
    irc_bench.py scale mxbridge|heisenbridge HS SECRET_FILE OWNER_TOKEN IRC_PORT USERS CHANNELS_PER_USER TAG

`run` prints one `key=value` line per figure. `scale` registers USERS Matrix users, logs each in
through the bridge with a nick of its own and joins CHANNELS_PER_USER channels of its own
(`#TAG-USER-N`), then checks on IRC that every channel has its bridged user and on Matrix that
every user was invited to every channel's room; it prints the counts and the time taken.
"""

import concurrent.futures
import hashlib
import hmac
import json
import socket
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request

TXN = [0]


def call(hs, token, method, path, body=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        hs + path,
        method=method,
        data=data,
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as res:
        return json.load(res)


def q(s):
    return urllib.parse.quote(s, safe="")


def until(what, check, secs=60):
    end = time.time() + secs
    while time.time() < end:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    sys.exit(f"irc_bench: never saw {what}")


def send(hs, token, room, body, msgtype="m.text"):
    TXN[0] += 1
    path = f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/b{time.time_ns()}{TXN[0]}"
    call(hs, token, "PUT", path, {"msgtype": msgtype, "body": body})


def bodies(hs, token, room, limit=50):
    path = f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit={limit}"
    return [e.get("content", {}).get("body", "") for e in call(hs, token, "GET", path)["chunk"]]


def fresh_invites(hs, token):
    n = int(time.time() * 10) % 997 + 1
    filt = q(json.dumps({"room": {"timeline": {"limit": n}}}))
    rooms = call(hs, token, "GET", f"/_matrix/client/v3/sync?timeout=0&filter={filt}").get("rooms", {})
    return rooms.get("invite", {})


def invited_named(hs, token, name):
    for room, data in fresh_invites(hs, token).items():
        for e in data.get("invite_state", {}).get("events", []):
            if e.get("type") == "m.room.name" and e.get("content", {}).get("name", "").lower() == name.lower():
                return room
    return None


def dm(hs, token, bot):
    room = call(hs, token, "POST", "/_matrix/client/v3/createRoom",
                {"is_direct": True, "preset": "private_chat", "invite": [bot]})["room_id"]
    until(f"{bot} in the DM",
          lambda: bot in call(hs, token, "GET", f"/_matrix/client/v3/rooms/{q(room)}/joined_members")["joined"])
    return room


def join(hs, token, room):
    call(hs, token, "POST", f"/_matrix/client/v3/rooms/{q(room)}/join", {})


class Irc:
    """A raw-socket IRC user; every PRIVMSG it reads is kept with its arrival time."""

    def __init__(self, port, nick):
        self.nick = nick
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.lines = []
        self.lock = threading.Lock()
        self.sock.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
        threading.Thread(target=self._read, daemon=True).start()
        until("registration", lambda: self.find(lambda l: " 001 " in l))

    def _read(self):
        buf = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\r\n")
            now = time.time()
            for raw in lines:
                line = raw.decode(errors="replace")
                if line.startswith("PING "):
                    self.sock.sendall(("PONG " + line[5:] + "\r\n").encode())
                with self.lock:
                    self.lines.append((now, line))

    def find(self, pred):
        with self.lock:
            return next((l for _, l in self.lines if pred(l)), None)

    def texts(self, nick, channel):
        prefix, middle = f":{nick}!", f" PRIVMSG {channel} :"
        with self.lock:
            return [(t, l.split(middle, 1)[1]) for t, l in self.lines if l.startswith(prefix) and middle in l]

    def send(self, line):
        self.sock.sendall((line + "\r\n").encode())


class Sync:
    """Alice's sync loop: message bodies in the room with their arrival times."""

    def __init__(self, hs, token, room):
        self.hs, self.token, self.room = hs, token, room
        self.seen = []
        self.lock = threading.Lock()
        first = call(hs, token, "GET", "/_matrix/client/v3/sync?timeout=0&filter=" + q(json.dumps({"room": {"timeline": {"limit": 1}}})))
        self.since = first["next_batch"]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        filt = q(json.dumps({"room": {"rooms": [self.room], "timeline": {"limit": 1000}}, "presence": {"types": []}}))
        while True:
            res = call(self.hs, self.token, "GET", f"/_matrix/client/v3/sync?timeout=30000&since={self.since}&filter={filt}", timeout=90)
            now = time.time()
            self.since = res["next_batch"]
            events = res.get("rooms", {}).get("join", {}).get(self.room, {}).get("timeline", {}).get("events", [])
            with self.lock:
                for e in events:
                    if e.get("type") == "m.room.message":
                        # One message may carry several IRC lines (heisenbridge joins a
                        # sender's consecutive lines): each line counts.
                        for line in e["content"].get("body", "").split("\n"):
                            self.seen.append((now, line))

    def bodies(self):
        with self.lock:
            return list(self.seen)


def setup_mxbridge(hs, token, port, channel, nick):
    room = dm(hs, token, "@_ircbench_bot:localhost")
    for text in ("login nick", nick, f"join {channel}"):
        send(hs, token, room, text)
        time.sleep(1.0)
    portal = until("the channel's invite", lambda: invited_named(hs, token, channel))
    join(hs, token, portal)
    return portal


def setup_heisenbridge(hs, token, port, channel, nick):
    control = dm(hs, token, "@heisenbridge:localhost")
    for text in ("ADDNETWORK bench", f"ADDSERVER bench 127.0.0.1 {port}", "OPEN bench"):
        send(hs, token, control, text)
        time.sleep(1.0)
    network = until("the network room's invite", lambda: invited_named(hs, token, "bench"))
    join(hs, token, network)
    for text in (f"NICK {nick}", "CONNECT"):
        send(hs, token, network, text)
        time.sleep(1.0)
    until("the connection", lambda: any("MxTest" in b for b in bodies(hs, token, network)), 60)
    send(hs, token, network, f"JOIN {channel}")
    # Heisenbridge names a channel's room after the channel and the network.
    portal = until("the channel's invite", lambda: invited_named(hs, token, f"{channel} (bench)"))
    join(hs, token, portal)
    return portal


def wait_all(arrived, n, secs):
    """What arrived once all `n` did, or when nothing more came for `secs` seconds."""
    last_count, last_change = -1, time.time()
    while True:
        got = arrived()
        if len(got) >= n:
            return got
        if len(got) != last_count:
            last_count, last_change = len(got), time.time()
        elif time.time() - last_change > secs:
            return got
        time.sleep(0.2)


def report(name, arrived, n, start):
    texts = [b for _, b in arrived]
    if arrived:
        last = max(t for t, _ in arrived)
        print(f"{name}_msgs_per_s={len(set(texts)) / (last - start):.2f}")
    print(f"{name}_delivered={len(set(texts))}/{n}")
    print(f"{name}_duplicates={len(texts) - len(set(texts))}")
    print(f"{name}_in_order={texts == sorted(texts)}")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run(hs, token, room, port, channel, bridge_nick, n, n_m2i, samples, gap):
    sync = Sync(hs, token, room)
    irc = Irc(port, "benchirc" + str(int(time.time()) % 10000))
    irc.send(f"JOIN {channel}")
    until("the channel on IRC", lambda: irc.find(lambda l: " 366 " in l))
    # A second IRC user in the channel sees when the server has relayed each line: what the
    # server takes is the same for both bridges, what comes after it is the bridge's.
    watcher = Irc(port, "benchwatch" + str(int(time.time()) % 10000))
    watcher.send(f"JOIN {channel}")
    until("the watcher in the channel", lambda: watcher.find(lambda l: " 366 " in l))
    time.sleep(2)
    tag = str(int(time.time()))

    # IRC -> Matrix, steady state: N lines as fast as the server takes them. InspIRCd reads
    # about 10 KB of a client's input at a time and leaves what is left for its next tick, a
    # second later, unless more arrives: the lines go 50 at a time (about 2 KB), 5 ms apart.
    start = time.time()
    for i in range(n):
        irc.send(f"PRIVMSG {channel} :i2m-{tag}-{i:05d}")
        if i % 50 == 49:
            time.sleep(0.005)
    arrived = wait_all(lambda: [(t, b) for t, b in sync.bodies() if b.startswith(f"i2m-{tag}-")], n, 180)
    report("irc_to_matrix", arrived, n, start)
    relayed = [t for t, x in watcher.texts(irc.nick, channel) if x.startswith(f"i2m-{tag}-")]
    if arrived and len(relayed) == n:
        print(f"irc_to_matrix_server_relayed_s={max(relayed) - start:.3f}")
        print(f"irc_to_matrix_after_server_ms={(max(t for t, _ in arrived) - max(relayed)) * 1000:.0f}")

    # Matrix -> IRC, steady state: N messages sent one after the other.
    n = n_m2i
    start = time.time()
    for i in range(n):
        send(hs, token, room, f"m2i-{tag}-{i:05d}")
    arrived = wait_all(lambda: [(t, x) for t, x in irc.texts(bridge_nick, channel) if x.startswith(f"m2i-{tag}-")], n, 600)
    report("matrix_to_irc", arrived, n, start)
    time.sleep(gap * 4)

    # Latency of single messages, each way, spaced so no flood limit applies.
    i2m, m2i = [], []
    for i in range(samples):
        text = f"lat-i2m-{tag}-{i}"
        t0 = time.time()
        irc.send(f"PRIVMSG {channel} :{text}")
        if wait_for(lambda: any(b == text for _, b in sync.bodies()), 30):
            i2m.append((next(t for t, b in sync.bodies() if b == text) - t0) * 1000)
        text = f"lat-m2i-{tag}-{i}"
        t0 = time.time()
        send(hs, token, room, text)
        if wait_for(lambda: any(x == text for _, x in irc.texts(bridge_nick, channel)), 30):
            m2i.append((next(t for t, x in irc.texts(bridge_nick, channel) if x == text) - t0) * 1000)
        time.sleep(gap)
    for name, values in (("irc_to_matrix", i2m), ("matrix_to_irc", m2i)):
        print(f"{name}_latency_probes={len(values)}/{samples}")
        if values:
            print(f"{name}_latency_p50_ms={pct(values, 50):.0f}")
            print(f"{name}_latency_p99_ms={pct(values, 99):.0f}")


def register(hs, secret_file, user):
    """A Matrix user through Synapse's shared-secret registration: its access token."""
    with open(secret_file, "rb") as f:
        secret = f.read().strip()
    url = hs + "/_synapse/admin/v1/register"
    with urllib.request.urlopen(url, timeout=60) as res:
        nonce = json.load(res)["nonce"]
    mac = hmac.new(secret, digestmod=hashlib.sha1)
    for part in (nonce, user, user + "-password"):
        mac.update(part.encode())
        mac.update(b"\x00")
    mac.update(b"notadmin")
    body = {"nonce": nonce, "username": user, "password": user + "-password", "admin": False, "mac": mac.hexdigest()}
    req = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as res:
        return json.load(res)["access_token"]


def invited_names(hs, token):
    names = set()
    for data in fresh_invites(hs, token).values():
        for e in data.get("invite_state", {}).get("events", []):
            if e.get("type") == "m.room.name":
                names.add(e.get("content", {}).get("name", "").lower())
    return names


def scale_user_mxbridge(hs, token, nick, channels):
    room = dm(hs, token, "@_ircbench_bot:localhost")
    send(hs, token, room, "login nick")
    time.sleep(0.5)
    send(hs, token, room, nick)
    time.sleep(0.5)
    for channel in channels:
        send(hs, token, room, f"join {channel}")
    return lambda: set(c.lower() for c in channels) <= invited_names(hs, token)


def scale_user_heisenbridge(hs, token, nick, channels):
    control = dm(hs, token, "@heisenbridge:localhost")
    send(hs, token, control, "OPEN bench")
    network = until("the network room's invite", lambda: invited_named(hs, token, "bench"), 120)
    join(hs, token, network)
    send(hs, token, network, f"NICK {nick}")
    time.sleep(0.5)
    send(hs, token, network, "CONNECT")
    until("the connection", lambda: any("MxTest" in b for b in bodies(hs, token, network)), 120)
    for channel in channels:
        send(hs, token, network, f"JOIN {channel}")
    # Heisenbridge names a channel's room after the channel and the network.
    return lambda: set(f"{c} (bench)".lower() for c in channels) <= invited_names(hs, token)


def irc_channels(port, prefix):
    """The channels named PREFIX* on the server that have members, by a LIST."""
    irc = Irc(port, "lister" + str(time.time_ns() % 100000))
    irc.send(f"LIST {prefix}*")
    until("the channel list", lambda: irc.find(lambda l: " 323 " in l), 60)
    found = set()
    with irc.lock:
        for _, line in irc.lines:
            parts = line.split(" ")
            if len(parts) > 4 and parts[1] == "322" and parts[3].startswith(prefix) and int(parts[4]) > 0:
                found.add(parts[3].lower())
    irc.send("QUIT")
    return found


def scale(bridge, hs, secret_file, owner_token, port, users, per_user, tag):
    start = time.time()
    if bridge == "heisenbridge":
        control = dm(hs, owner_token, "@heisenbridge:localhost")
        for text in ("ADDNETWORK bench", f"ADDSERVER bench 127.0.0.1 {port}", "ADDMASK @*:localhost"):
            send(hs, owner_token, control, text)
            time.sleep(1.0)
    setup = scale_user_mxbridge if bridge == "mxbridge" else scale_user_heisenbridge
    wanted = set()

    def one(i):
        token = register(hs, secret_file, f"{tag}u{i:03d}")
        channels = [f"#{tag}-{i:03d}-{j}" for j in range(per_user)]
        wanted.update(c.lower() for c in channels)
        return setup(hs, token, f"{tag}{i:03d}", channels)

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        checks = list(pool.map(one, range(users)))
    sent = time.time()
    # Every channel on IRC with its user, every user invited to each of its channels' rooms.
    end = time.time() + 600
    on_irc = set()
    while time.time() < end:
        on_irc = irc_channels(port, f"#{tag}-") & wanted
        if len(on_irc) == len(wanted):
            break
        time.sleep(5)
    joined = time.time()
    invited = 0
    for check in checks:
        while not check() and time.time() < end:
            time.sleep(1)
        invited += check()
    print(f"{bridge}_users={users}")
    print(f"{bridge}_channels_on_irc={len(on_irc)}/{len(wanted)}")
    print(f"{bridge}_users_invited_to_all_rooms={invited}/{users}")
    print(f"{bridge}_setup_s={sent - start:.0f}")
    print(f"{bridge}_all_joined_s={joined - start:.0f}")
    print(f"{bridge}_all_rooms_s={time.time() - start:.0f}")


def wait_for(check, secs):
    end = time.time() + secs
    while time.time() < end:
        if check():
            return True
        time.sleep(0.02)
    return False

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "setup-mxbridge":
        print(setup_mxbridge(args[0], args[1], int(args[2]), args[3], args[4]))
    elif cmd == "setup-heisenbridge":
        print(setup_heisenbridge(args[0], args[1], int(args[2]), args[3], args[4]))
    elif cmd == "run":
        run(args[0], args[1], args[2], int(args[3]), args[4], args[5], int(args[6]), int(args[7]), int(args[8]), float(args[9]))
    elif cmd == "scale":
        scale(args[0], args[1], args[2], args[3], int(args[4]), int(args[5]), int(args[6]), args[7])
    else:
        sys.exit(__doc__)

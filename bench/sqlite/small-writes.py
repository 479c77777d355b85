"""Writes the two scripts of experiment 2 (bench/sqlite/experiments.sh): 1,000 rounds of a 2-row
membership upsert and a 15-row progress upsert, as autocommits (argv[1]) and as one transaction
per round (argv[2])."""
import random
import sys

random.seed(1)


def progress(i):
    rows = ",".join(
        f"('!room{r:03d}abcdefgh:localhost',{i},{r})" for r in random.sample(range(50), 15)
    )
    return (
        f"INSERT INTO mx_room_progress (room_id,batch_seq,idx) VALUES {rows} "
        "ON CONFLICT (room_id) DO UPDATE SET batch_seq=excluded.batch_seq, idx=excluded.idx "
        "WHERE (excluded.batch_seq, excluded.idx) > (mx_room_progress.batch_seq, mx_room_progress.idx);"
    )


def members():
    rows = ",".join(
        f"('!room{random.randrange(50):03d}abcdefgh:localhost',"
        f"'@user{random.randrange(200000):06d}:localhost','join','User',NULL)"
        for _ in range(2)
    )
    return (
        f"INSERT INTO mx_membership VALUES {rows} ON CONFLICT (room_id,user_id) DO UPDATE SET "
        "membership=excluded.membership, displayname=excluded.displayname, "
        "avatar_url=excluded.avatar_url;"
    )


separate, grouped = [], []
for i in range(1000):
    p, m = progress(i), members()
    separate += [m, p]
    grouped += ["BEGIN;", m, p, "COMMIT;"]
open(sys.argv[1], "w").write("\n".join(separate))
open(sys.argv[2], "w").write("\n".join(grouped))

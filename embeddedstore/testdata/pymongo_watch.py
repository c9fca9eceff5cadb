"""Check the embedded store with pymongo: CRUD, a claim, and a change stream.

Usage: python3 pymongo_watch.py URI
Prints one line per check and exits non-zero on the first failure.
"""

import sys

import pymongo
from pymongo import ReturnDocument


def main(uri):
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000)
    tasks = client.bolt_test.tasks
    print("pymongo", pymongo.version)

    with tasks.watch(max_await_time_ms=200) as stream:
        # Nothing has happened yet, so try_next returns None after the await time.
        assert stream.try_next() is None, "try_next returned an event before any write"

        ids = [tasks.insert_one({"n": n}).inserted_id for n in range(3)]
        for n, inserted_id in enumerate(ids):
            change = stream.next()
            assert change["operationType"] == "insert", change
            assert change["documentKey"]["_id"] == inserted_id, change
            assert change["fullDocument"]["n"] == n, change
            assert change["ns"] == {"db": "bolt_test", "coll": "tasks"}, change
        print("watch: saw", len(ids), "inserts in order")
        token = stream.resume_token

    claimed = tasks.find_one_and_update(
        {"claimed": {"$ne": True}},
        {"$set": {"claimed": True}},
        return_document=ReturnDocument.AFTER,
    )
    assert claimed["claimed"] is True, claimed
    tasks.delete_one({"_id": claimed["_id"]})

    with tasks.watch(resume_after=token) as resumed:
        update = resumed.next()
        assert update["operationType"] == "update", update
        assert update["documentKey"]["_id"] == claimed["_id"], update
        delete = resumed.next()
        assert delete["operationType"] == "delete", delete
        print("resume: saw the update and the delete")

    try:
        tasks.insert_one({"score": float("nan")})
        raise AssertionError("inserting NaN succeeded")
    except pymongo.errors.WriteError as error:
        assert error.code == 2, error
        assert '"score"' in str(error), error
    assert tasks.count_documents({}) == 2
    print("values: NaN rejected, connection still usable")


if __name__ == "__main__":
    main(sys.argv[1])

"""The SQLite results store: round trip, one row per trial, meta, errors."""

from __future__ import annotations

import math
import sqlite3

import pytest

from hwsim.study.store import DB_NAME, ResultsStore, TrialRecord


def full_record(h="h1", status="ok") -> TrialRecord:
    return TrialRecord(
        hash=h,
        config={"weight": "fx8.6", "lr": 0.1, "seed": 2, "fail": False},
        status=status,
        error="RuntimeError: boom" if status != "ok" else None,
        metrics={"loss": 0.25, "stall_fraction": 0.5, "worst": float("nan"), "big": float("inf")},
        history=[{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}],
        info={"note": "x", "nested": {"a": [1, 2]}},
        role="baseline",
        started=1000.5,
        finished=1001.75,
        wall_s=1.25,
        hwsim_version="0.1.0",
        worker="host:123",
    )


def same(a: TrialRecord, b: TrialRecord) -> bool:
    def norm(d):
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

    return norm(a.metrics) == norm(b.metrics) and {
        k: v for k, v in vars(a).items() if k != "metrics"
    } == {k: v for k, v in vars(b).items() if k != "metrics"}


def test_round_trip_every_field(tmp_path):
    rec = full_record()
    with ResultsStore(tmp_path / "out") as store:
        assert store.record(rec)
    # a new connection (another process would do the same) reads it back exactly
    with ResultsStore(tmp_path / "out", create=False) as store:
        (back,) = store.records()
    assert same(back, rec)
    assert math.isnan(back.metrics["worst"]) and back.metrics["big"] == math.inf


def test_a_trial_is_stored_once(tmp_path):
    with ResultsStore(tmp_path) as store:
        assert store.record(full_record("a"))
        assert not store.record(full_record("a", status="failed"))  # ignored, not overwritten
        assert store.record(full_record("b", status="diverged"))
        assert store.finished_hashes() == {"a", "b"}
        assert [r.status for r in store.records()] == ["ok", "diverged"]
        assert store.counts() == {"ok": 1, "failed": 0, "diverged": 1, "timeout": 0}
        assert [r.hash for r in store.records(status="diverged")] == ["b"]
        assert store.delete(["b"]) == 1
        assert store.finished_hashes() == {"a"}


def test_meta_round_trip(tmp_path):
    with ResultsStore(tmp_path) as store:
        assert store.get_meta("spec") is None
        store.set_meta("spec", {"name": "x", "grid": {"lr": [0.1]}})
        store.set_meta("spec", {"name": "y"})
        assert store.get_meta("spec") == {"name": "y"}


def test_bad_status_and_missing_store(tmp_path):
    with pytest.raises(ValueError, match="status must be one of"):
        TrialRecord("h", {}, "done")
    with pytest.raises(FileNotFoundError, match="hwsim sweep"):
        ResultsStore(tmp_path / "nothing", create=False)


def test_database_rejects_unknown_status_even_from_raw_sql(tmp_path):
    ResultsStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO trials (hash, config, status, metrics, history, info) VALUES ('x', '{}', 'meh', '{}', '[]', '{}')"
        )
    conn.close()


def test_claims_and_leases(tmp_path):
    from hwsim.study.store import make_owner

    me = make_owner()
    with ResultsStore(tmp_path) as store:
        assert store.claim("a", me, 60) == "claimed"
        assert store.claim("a", me, 60) == "claimed"  # one's own claim: renewed
        assert store.claim("a", "otherhost:1:0", 60) == "busy"  # a live holder keeps it
        assert store.claim("b", "otherhost:1:0", 60) == "claimed"
        assert store.claim("b", me, 60) == "busy"
        store.conn.execute("UPDATE claims SET expires = 0 WHERE hash = 'b'")
        assert store.claim("b", me, 60) == "claimed"  # its lease expired: taken over
        # a holder on this host whose process is gone: taken over at once
        import platform

        dead = f"{platform.node()}:{2**22 + 12345}:0"
        assert store.claim("c", dead, 60) == "claimed"
        assert store.claim("c", me, 60) == "claimed"
        store.record(full_record("a"), owner=me)
        assert store.claim("a", "otherhost:1:0", 60) == "done"
        store.release(me)
        assert store.conn.execute("SELECT COUNT(*) FROM claims").fetchone() == (0,)


def _open_and_claim(folder: str, n: int) -> str:
    try:
        with ResultsStore(folder) as store:
            return store.claim(f"h{n}", f"owner{n}", 60.0)
    except Exception as exc:  # reported to the parent, which fails the test
        return repr(exc)


def test_sweeps_opening_a_new_store_at_once_all_get_in(tmp_path):
    # several processes creating the same store: the switch to WAL deadlocks in SQLite,
    # which answers "locked" at once; the store waits and retries instead (CI saw one
    # of two sweeps die here)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        for round_ in range(12):
            folder = str(tmp_path / f"out{round_}")
            got = pool.starmap(_open_and_claim, [(folder, n) for n in range(4)])
            assert got == ["claimed"] * 4, got

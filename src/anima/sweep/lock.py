"""Atomic study attributes: a study-wide mutex and a first-writer-wins record, for workers that share storage.

Optuna has no lock of its own: two workers that both read "2 of 3 trials" each start one, and the study ends
with 4 (`MaxTrialsCallback` has the same race). The study's user-attribute table has a unique (study, key)
constraint on every backend Optuna supports (SQLite, PostgreSQL, MySQL), so an INSERT of one key is a lock
that works across processes and machines with nothing but the storage: the insert that lands holds it."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from optuna.storages import RDBStorage

BUDGET_LOCK = "anima_budget_lock"  # held from counting the budget until the new trial exists
STALE_AFTER = 120.0  # seconds: a holder that died inside the critical section is evicted after this


def insert_study_attr(storage: RDBStorage, study_id: int, key: str, value: Any) -> bool:
    """Insert a study user attribute unless the key exists; True when this call wrote it."""
    from optuna.storages._rdb import models
    from sqlalchemy import exc, insert

    try:
        with storage.engine.begin() as conn:
            conn.execute(insert(models.StudyUserAttributeModel.__table__).values(
                study_id=study_id, key=key, value_json=json.dumps(value)))
    except exc.IntegrityError:
        return False
    return True


def _delete_study_attr(storage: RDBStorage, study_id: int, key: str, value_json: str) -> None:
    """Delete the attribute only if it still holds `value_json` (never another holder's lock)."""
    from optuna.storages._rdb import models
    from sqlalchemy import delete

    table = models.StudyUserAttributeModel.__table__
    with storage.engine.begin() as conn:
        conn.execute(delete(table).where(table.c.study_id == study_id, table.c.key == key,
                                         table.c.value_json == value_json))


class StudyLock:
    """A mutex over one study, held through its storage; `release()` is idempotent, so it can be released
    early (the moment the guarded trial exists) and again in a `finally`."""

    def __init__(self, storage: RDBStorage, study_id: int, key: str = BUDGET_LOCK) -> None:
        self.storage, self.study_id, self.key = storage, study_id, key
        self._held: str | None = None

    def acquire(self, poll: float = 0.1) -> None:
        from optuna.storages._rdb import models
        from sqlalchemy import select

        mine = {"host": socket.gethostname(), "pid": os.getpid(), "t": time.time()}
        table = models.StudyUserAttributeModel.__table__
        while not insert_study_attr(self.storage, self.study_id, self.key, mine):
            with self.storage.engine.connect() as conn:
                held = conn.execute(select(table.c.value_json).where(
                    table.c.study_id == self.study_id, table.c.key == self.key)).scalar()
            if held is not None and time.time() - float(json.loads(held).get("t", 0)) > STALE_AFTER:
                _delete_study_attr(self.storage, self.study_id, self.key, held)  # its holder died in there
                continue
            time.sleep(poll)
        self._held = json.dumps(mine)

    def release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            _delete_study_attr(self.storage, self.study_id, self.key, held)

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

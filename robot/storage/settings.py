"""Settings the robot writes at every step (heartbeat, rollup watermark), with Core statements."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from robot.storage.models import Setting

SETTING = Setting.__table__
UPDATE_SETTING = (update(SETTING).where(SETTING.c.name == bindparam("_name"))
                  .values(value=bindparam("_value"), actor=bindparam("_actor"), changed_at=bindparam("_changed_at")))
STORED_NAMES = select(SETTING.c.name).where(SETTING.c.name.in_(bindparam("names", expanding=True)))


def store(session: Session, values: dict[str, str], actor: str, now: datetime) -> None:
    """Each setting given at its value: two statements (which exist, then an update of those and an insert of
    the others), not an ORM read and flush of each (session.merge). On SQLite, which counts the rows an
    executemany changed, the update comes first, and when it found them all (every step's heartbeat after the
    first) that is all."""
    if not values:
        return
    updates = [{"_name": name, "_value": value, "_actor": actor, "_changed_at": now} for name, value in values.items()]
    sqlite = session.get_bind().dialect.name == "sqlite"
    if sqlite and session.execute(UPDATE_SETTING, updates).rowcount == len(updates):
        return
    stored = set(session.scalars(STORED_NAMES, {"names": list(values)}))
    if stored and not sqlite:  # (on SQLite updated above)
        session.execute(UPDATE_SETTING, [row for row in updates if row["_name"] in stored])
    if len(stored) < len(values):
        session.execute(insert(SETTING), [{"name": name, "value": value, "actor": actor, "changed_at": now}
                                          for name, value in values.items() if name not in stored])

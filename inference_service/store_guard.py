"""Is the feature store still the one the service opened, holding what its manifests say?

Serving reads history features from the latest committed feature version and writes the
prediction log into the same store. Two ways it can change under a running service without any
error being raised:

* **The SQLite file is deleted or replaced.** Open connections keep using the old, unlinked file:
  reads go on answering from it and log rows "commit" into a file nobody will ever open again.
  :meth:`StoreGuard.file_problem` compares the path's device and inode with those seen at start.
* **A version's rows are deleted** (the manifest says N rows, the table holds fewer): predictions
  silently lose their history. :meth:`StoreGuard.check` counts the latest version's rows.

Either makes the service not ready, with the reason, until it is resolved; the prediction log holds
its rows (pending, not counted as written) meanwhile.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Engine

from shared import feature_table as ft


def sqlite_path(engine: Engine) -> Path | None:
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).resolve()


class StoreGuard:
    def __init__(self, engine: Engine, dataset: str):
        self.engine = engine
        self.dataset = dataset
        self.path = sqlite_path(engine)
        self._identity: tuple[int, int] | None = None

    def remember(self) -> None:
        """Record the file's identity (after the store is opened and its schema prepared)."""
        if self.path is not None:
            try:
                st = os.stat(self.path)
            except OSError:
                return
            self._identity = (st.st_dev, st.st_ino)

    def file_problem(self) -> str | None:
        if self.path is None or self._identity is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the feature store file {self.path.name} was deleted while serving"
        except OSError as exc:
            return f"the feature store file {self.path.name} cannot be read ({exc.strerror})"
        if (st.st_dev, st.st_ino) != self._identity:
            return f"the feature store file {self.path.name} was replaced while serving"
        return None

    def check(self) -> str | None:
        """A reason the store cannot be trusted now, or None."""
        problem = self.file_problem()
        if problem is not None:
            return problem
        try:
            info = ft.get_version(self.engine, self.dataset)
        except ft.FeatureStoreError:
            return None  # no version yet (or no store): the scoring paths report that themselves
        t = ft.feature_rows
        with self.engine.connect() as conn:
            n = conn.execute(select(func.count()).select_from(t).where(
                and_(t.c.dataset == self.dataset, t.c.version == info.version))).scalar_one()
        if n != info.row_count:
            return (f"feature version {info.version} of {self.dataset!r} holds {n} rows but its manifest records "
                    f"{info.row_count}: the store was changed outside fti (versions are immutable); restore it "
                    "or publish a new version with `fti features run`")
        return None

    def status(self) -> dict[str, Any]:
        return {"sqlite_file_watched": self._identity is not None}

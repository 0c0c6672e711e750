"""The tracking server and its database, apart from what is recorded in it: reachability and
integrity checks, the writers' lock on a sqlite database, and a moved workspace's artifact
locations, an experiment found or created with its artifact location
(:func:`experiment_id`); :func:`flatten` turns nested settings into MLflow parameters.
No Prefect here: the command line checks the tracking server before any flow starts.
"""

from __future__ import annotations

import fcntl
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

__all__ = [
    "TrackingError",
    "check_tracking",
    "experiment_id",
    "flatten",
    "follow_moved_workspace",
    "tracking_lock",
]


class TrackingError(RuntimeError):
    """The MLflow tracking server cannot be reached; the message names its URI."""


def _redacted(uri: str) -> str:
    """``uri`` without the password of a ``user:password@host`` part."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming ``uri``, when an http(s) tracking server does not answer (MLflow's own
    client would retry for minutes). Any HTTP answer, even an error status, counts as up.
    A local sqlite database that exists must pass sqlite's own integrity check (a truncated
    ``mlflow.db`` fails here, naming the file, not after all the training)."""
    if uri.startswith("sqlite:///"):
        _check_sqlite(Path(uri[len("sqlite:///") :]))
        return
    if not uri.startswith(("http://", "https://")):
        return
    try:
        parts = urllib.parse.urlsplit(uri)  # urllib takes no user:password@ in the address
        bare = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        urllib.request.urlopen(bare.geturl().rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:  # URLError, refused, timed out, bad URL
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {_redacted(uri)}: {reason}"
        ) from None  # the chained error would repeat the URI, credentials included


def _check_sqlite(db: Path) -> None:
    import sqlite3
    from contextlib import closing

    if not db.exists():
        return  # MLflow creates it
    try:
        uri = f"{db.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as con:
            (status,) = con.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as exc:
        status = str(exc)
    if status != "ok":
        raise TrackingError(
            f"{db}: the MLflow tracking database is damaged ({status}); restore it or move it "
            "aside to start a new one"
        )


@contextmanager
def tracking_lock(uri: str) -> Iterator[None]:
    """Serialize writers of one sqlite tracking database across processes (``flock`` on
    ``<db>.lock``): MLflow creates its tables, experiments and registered versions with
    check-then-write steps that two campaigns finishing at once would race."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# columns of MLflow's sqlite schema that hold absolute artifact locations
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)


def follow_moved_workspace(uri: str, experiment: str, workspace: Path) -> str | None:
    """Point a sqlite tracking database at the workspace it now sits in.

    MLflow stores an experiment's ``artifact_location`` (and each run's artifact URI) as an
    absolute path, so a campaign folder that was moved or copied would write its new artifacts
    into the old folder. When the database lies in ``workspace`` (or the old folder is gone),
    locations under the old ``<workspace>/mlartifacts`` are rewritten to the new one (the copy
    holds the same artifacts there). Returns the old location when it rewrote something.
    """
    import sqlite3

    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :])
    if not db.exists():
        return None
    new = (workspace / "mlartifacts").resolve().as_uri()
    with sqlite3.connect(db, timeout=60) as con:
        try:
            row = con.execute(
                "SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)
            ).fetchone()
        except sqlite3.DatabaseError:
            return None  # no MLflow tables yet (or not a database: MLflow names the file)
        old = row[0] if row else None
        if (
            not old
            or old == new
            or not old.startswith("file://")
            or not old.endswith("/mlartifacts")
        ):
            return None
        old_path = Path(old[len("file://") :])
        if not db.resolve().is_relative_to(workspace.resolve()) and old_path.exists():
            return None  # a database shared by several workspaces: leave it as it is
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, column in _LOCATION_COLUMNS:
            if table not in tables:
                continue
            columns = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
            if column in columns:
                con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608
                    f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (new, len(old) + 1, old, len(old) + 1, old + "/"),
                )
    return old


def experiment_id(client: Any, name: str, workspace: Path, local: bool) -> str:
    """The id of MLflow experiment ``name``, created when there is none.

    Parameters
    ----------
    client : mlflow.MlflowClient
        The tracking client.
    name : str
        The experiment.
    workspace : pathlib.Path
        The campaign's workspace.
    local : bool
        Whether the tracking store is local (a sqlite file or a folder): a new experiment then
        keeps its artifacts in ``<workspace>/mlartifacts``; a server's own default otherwise.

    Returns
    -------
    str
        The experiment's id.
    """
    exp = client.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    location = (workspace / "mlartifacts").resolve().as_uri() if local else None
    return client.create_experiment(name, artifact_location=location)


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings as {"a.b.c": "value"} (for MLflow parameters)."""
    out: dict[str, str] = {}
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(obj) if isinstance(obj, list | tuple) else str(obj)
    return out

"""The Zarr v3 store: content-addressed groups, published only once complete.

Layout (docs/architecture.md): ``<store>/<kind>/<key>/`` with ``kind`` in ``datasets``,
``features``, ``latent``. A group is *complete* when its ``complete`` attribute is true;
readers ignore anything else. On a local store a new group is written under
``<store>/.staging/`` and moved into place with one ``os.rename`` (atomic on POSIX), so a crash
or a concurrent writer can never leave a torn group behind. An object store (any fsspec URL:
``s3://``, ``gs://``, ``memory://``) has no rename: the staged group is copied into place with
its ``zarr.json`` written last, which is when a Zarr v3 group starts to exist for readers.
A version (a grown dataset or its features) names its parent in ``appends``;
:meth:`Store.chain` resolves it for every kind.

Why one module (over 400 lines): writing, publishing, sweeping stale staging and resolving a
version's parents all rest on the same invariant (a group exists for readers only when it is
complete), and the checksum helpers are what readers check groups with; split, each part would
have to re-state it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr

__all__ = [
    "Store",
    "content_hash",
    "file_sha256",
    "StoreError",
    "CorruptionError",
    "chunk_digest",
    "read_verified",
    "array",
    "read_array",
]

KINDS = ("datasets", "features", "latent")
# who stages a group: host and process id (no "-" in the host part), so that a later writer can
# tell a dead writer's leftovers from a live one's
_HOST = (os.uname().nodename if hasattr(os, "uname") else "host").replace("-", "_") or "host"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class StoreError(RuntimeError):
    """A store that cannot be opened or written; the message names the store and the key."""


class CorruptionError(StoreError):
    """Stored bytes that no longer match the checksum written with them: a chunk file deleted
    (Zarr would read it back as its fill value), truncated or changed. Names the store, the
    group's key and the array."""


def chunk_digest(data: np.ndarray) -> int:
    """A 64-bit checksum (blake2b) of an array's dtype, shape and little-endian bytes; never 0,
    so that a checksum chunk read back as Zarr's fill value (0) matches nothing."""
    a = np.ascontiguousarray(data)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{a.dtype.str}:{a.shape}".encode())
    h.update(a.tobytes())
    return int.from_bytes(h.digest(), "little") or 1


def array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group``; KeyError when it is absent or a group."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise KeyError(f"{group.path}/{name} is a group, not an array")
    return node


def read_array(
    group: zarr.Group, name: str, lo: int | None = None, hi: int | None = None
) -> np.ndarray:
    """Rows ``lo:hi`` (all by default) of the array ``name`` of ``group`` as a numpy array."""
    return np.asarray(array(group, name)[lo:hi])


def _checksums(group: zarr.Group) -> dict[str, str] | None:
    """The ``checksums`` attribute of a sealed group (None for a group without one)."""
    sums = group.attrs.get("checksums")
    return {str(k): str(v) for k, v in sums.items()} if isinstance(sums, dict) else None


def _arrays(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    for name, node in sorted(group.members()):
        if isinstance(node, zarr.Array):
            yield prefix + name, node
        else:
            yield from _arrays(node, f"{prefix}{name}/")


def seal(group: zarr.Group) -> None:
    """Record a checksum of every array of ``group`` in its ``checksums`` attribute."""
    group.attrs["checksums"] = {
        name: f"{chunk_digest(np.asarray(arr[...])):016x}" for name, arr in _arrays(group)
    }


def read_verified(group: zarr.Group, name: str, store_url: str = "") -> np.ndarray:
    """The whole array ``name`` of a sealed group, checked against its recorded checksum.

    Raises :class:`CorruptionError` naming the store, the group and the array when the array
    is gone or its bytes differ (a deleted chunk file reads back as zeros without this check).
    Groups written before checksums existed (no ``checksums`` attribute) are read unchecked.
    """
    where = f"{store_url}: {group.path}" if store_url else group.path
    try:
        data = read_array(group, name)
    except (KeyError, ValueError, OSError, RuntimeError) as exc:  # numcodecs: RuntimeError
        raise CorruptionError(f"{where}: array {name} is missing or unreadable ({exc})") from exc
    expected = _checksums(group)
    if expected is None:
        return data
    if name not in expected or f"{chunk_digest(data):016x}" != expected[name]:
        raise CorruptionError(
            f"{where}: array {name} does not match its checksum (a chunk file was deleted, "
            "truncated or changed)"
        )
    return data


def content_hash(*parts: Any) -> str:
    """sha256 (hex) of a sequence of numpy arrays, strings and JSON-able objects.

    Arrays contribute their dtype, shape and little-endian bytes, so equal content gives an
    equal key whatever the file it came from.
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            a = np.ascontiguousarray(part)
            a = a.astype(a.dtype.newbyteorder("<"), copy=False)
            h.update(f"ndarray:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        elif part is None:
            h.update(b"none")
        else:
            h.update(b"json:" + json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    if "://" in url:
        return None
    return Path(url)


class Store:
    """A Zarr v3 store at a local path or any fsspec URL (``s3://bucket/atompipe.zarr``)."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.url = str(url)
        self.path = _local_path(self.url)
        try:
            if self.path is not None:
                self.path.mkdir(parents=True, exist_ok=True)
            self.root = zarr.open_group(self.url, mode="a")
        except OSError as exc:
            raise StoreError(f"cannot open the store {self.url}: {exc}") from exc
        except Exception as exc:  # an object store: no credentials, no client package (s3fs), ...
            if self.path is not None:
                raise
            name = type(exc).__name__
            raise StoreError(f"cannot open the store {self.url}: {name}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- reading -------------------------------------------------------------------------
    def has(self, kind: str, key: str) -> bool:
        """True when ``<kind>/<key>`` exists and is complete."""
        group = self._get(kind, key)
        return group is not None and bool(group.attrs.get("complete", False))

    def _get(self, kind: str, key: str) -> zarr.Group | None:
        self._check_kind(kind)
        try:
            node = zarr.open_group(self.url, mode="r", path=f"{kind}/{key}")
        except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
            return None
        return node

    def open(self, kind: str, key: str) -> zarr.Group:
        """The complete group ``<kind>/<key>`` (read-only); a clear error when absent."""
        group = self._get(kind, key)
        if group is None or not group.attrs.get("complete", False):
            raise KeyError(f"{self.url}: no complete {kind} entry with key {key}")
        return group

    def keys(self, kind: str) -> list[str]:
        """Keys of the complete groups of one kind."""
        self._check_kind(kind)
        section = self.root.get(kind)
        if not isinstance(section, zarr.Group):
            return []
        return sorted(k for k in section.group_keys() if self.has(kind, k))

    # -- writing -------------------------------------------------------------------------
    @contextmanager
    def writing(self, kind: str, key: str) -> Iterator[zarr.Group]:
        """Write a new group and publish it on a clean exit; discard it on an error.

        Yields the group to fill. If another writer published the same key meanwhile, this
        writer's copy is dropped (same key means same content).
        """
        self._check_kind(kind)
        self._sweep_staging()
        staging = f".staging/{kind}-{key[:16]}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex}"
        if self.path is None:
            yield from self._writing_remote(kind, key, staging)
            return
        try:
            # The folder first, synchronously: a store this user may not write fails here with
            # one PermissionError (zarr's own writes run concurrently and would log the others).
            try:
                (self.path / staging).mkdir(parents=True)
                group = self.root.require_group(staging)
                yield group
                seal(group)
                group.attrs["complete"] = True
                target = self.path / kind / key
                target.parent.mkdir(parents=True, exist_ok=True)
                self._ensure_parent_group(kind)
                try:
                    os.rename(self.path / staging, target)
                except OSError:
                    if not self.has(kind, key):
                        raise
            finally:
                shutil.rmtree(self.path / staging, ignore_errors=True)
        except OSError as exc:  # disk full, permission denied, file too large: nothing published
            if not self._is_ours(exc):
                raise  # e.g. the caller's source file: not a store error
            raise StoreError(f"cannot write {kind}/{key} to the store {self.url}: {exc}") from exc

    def _sweep_staging(self) -> None:
        """Remove staged groups left by writers that died on this host (a crash or SIGKILL
        between staging and publishing; on an object store, an interrupted copy). A staged
        group is named after its writer's host and process id; one whose process is gone is
        an orphan (decided by the process table, not by its age: no clock involved). Groups
        of live writers, of other hosts, or named before this scheme are left alone."""
        try:
            names = self._staged_names()
            for name in names:
                parts = name.split("-")
                if len(parts) < 5 or parts[-3] != _HOST or not parts[-2].isdigit():
                    continue
                pid = int(parts[-2])
                if pid == os.getpid() or _alive(pid):
                    continue
                if self.path is not None:
                    shutil.rmtree(self.path / ".staging" / name, ignore_errors=True)
                else:
                    import fsspec

                    fs, root = fsspec.url_to_fs(self.url)
                    fs.rm(f"{root}/.staging/{name}", recursive=True)
        except (OSError, ValueError):  # a sweep never fails a write
            return

    def _staged_names(self) -> list[str]:
        if self.path is not None:
            folder = self.path / ".staging"
            return [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        import fsspec

        fs, root = fsspec.url_to_fs(self.url)
        fs.invalidate_cache(f"{root}/.staging")
        try:
            entries = fs.ls(f"{root}/.staging", detail=False)
        except FileNotFoundError:
            return []
        return [
            str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries if not str(e).endswith(".json")
        ]

    def _is_ours(self, exc: OSError) -> bool:
        """An OSError of the store's own files: it names none (a failed write: EFBIG, ENOSPC)
        or one inside the store. One naming a file elsewhere (a source file the caller was
        reading inside :meth:`writing`) is the caller's and keeps its own type and message."""
        name = exc.filename
        if name is None or self.path is None:
            return True
        try:
            return Path(os.fsdecode(name)).resolve().is_relative_to(self.path.resolve())
        except (OSError, ValueError, TypeError):
            return True

    def _writing_remote(self, kind: str, key: str, staging: str) -> Iterator[zarr.Group]:
        """Object stores have no rename: the group is written under ``staging`` and copied to
        ``<kind>/<key>`` with its own ``zarr.json`` last. A Zarr v3 group does not exist until
        its ``zarr.json`` does, so readers never see a partial copy; a concurrent writer of the
        same key copies the same bytes and deletes only its own staging group."""
        import fsspec

        fs, root = fsspec.url_to_fs(self.url)
        src, dst = f"{root}/{staging}", f"{root}/{kind}/{key}"
        try:
            try:
                group = self.root.require_group(staging)
                yield group
                seal(group)
                group.attrs["complete"] = True
                self._ensure_parent_group(kind)
                meta = f"{src}/zarr.json"
                fs.invalidate_cache(src)
                for path in [p for p in fs.find(src) if p != meta] + [meta]:
                    fs.copy(path, dst + path[len(src) :])
            finally:
                if fs.exists(src):
                    fs.rm(src, recursive=True)
        except OSError as exc:
            if exc.filename is not None and root not in os.fsdecode(exc.filename):
                raise  # not the object store's: the caller's own file
            raise StoreError(f"cannot write {kind}/{key} to the store {self.url}: {exc}") from exc

    def chain(self, kind: str, key: str) -> list[tuple[str, zarr.Group]]:
        """(key, group) of the groups holding ``<kind>/<key>``'s rows, the oldest first: the
        group alone, or a version's parents and then the version. A version names its parent in
        the attribute ``appends`` (``{"parent": key, ...}``) and stores only what it appended.
        A parent that is missing or incomplete, or a chain that loops, is a
        :class:`CorruptionError` naming it; the key asked for itself missing is the KeyError of
        :meth:`open`."""
        chain: list[tuple[str, zarr.Group]] = []
        k: str | None = key
        while k is not None:
            if any(k == seen for seen, _ in chain):
                raise CorruptionError(f"{self.url}: {kind}/{key}: its parent chain loops at {k}")
            try:
                group = self.open(kind, k)
            except KeyError as exc:
                if k == key:
                    raise  # the group asked for is absent: the store's own message
                raise CorruptionError(
                    f"{self.url}: {kind}/{key}: its parent {kind}/{k} is missing or incomplete "
                    "(the version stores only what it appended)"
                ) from exc
            chain.append((k, group))
            link = group.attrs.get("appends")
            k = None
            if link is not None:
                if not isinstance(link, dict) or not isinstance(link.get("parent"), str):
                    raise CorruptionError(f"{self.url}: {kind}/{chain[-1][0]}: bad 'appends'")
                k = link["parent"]
        return chain[::-1]

    def require(self, kind: str, key: str) -> zarr.Group:
        """An in-place group for resumable, chunk-by-chunk writing (features, latent).

        The caller marks it complete with :meth:`mark_complete` once every chunk is written.
        """
        self._check_kind(kind)
        return self.root.require_group(f"{kind}/{key}")

    def mark_complete(self, kind: str, key: str) -> None:
        self.root[f"{kind}/{key}"].attrs["complete"] = True

    def delete(self, kind: str, key: str) -> None:
        self._check_kind(kind)
        if f"{kind}/{key}" in self.root:
            del self.root[f"{kind}/{key}"]

    # -- a small index: content key of some input -> key of what was made from it ------
    def remember(self, source_key: str, key: str) -> None:
        """Record that ``source_key`` (e.g. the hash of some files' bytes) made ``key``.

        The index is a cache: a store that may be read but not written (another user's, a
        read-only file system) still serves the datasets it holds, so the entry is skipped."""
        try:
            self.root.require_group(f"index/{source_key}").attrs["key"] = key
        except PermissionError:
            return
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise

    def lookup(self, source_key: str) -> str | None:
        """The key recorded for ``source_key``, if its dataset is still complete."""
        try:
            node = zarr.open_group(self.url, mode="r", path=f"index/{source_key}")
        except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
            return None
        key = node.attrs.get("key")
        return key if isinstance(key, str) and key and self.has("datasets", key) else None

    def _ensure_parent_group(self, kind: str) -> None:
        if kind not in self.root:
            self.root.require_group(kind)

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown store section {kind!r}; expected one of {KINDS}")

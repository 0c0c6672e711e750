"""Reading a campaign file before validation: a safe YAML loader that refuses duplicate keys,
one-line messages for YAML and validation errors, ``--set`` overrides, and the resolution of
relative paths against the campaign's root with the checks that keep them inside it (the rules
are in :mod:`flows.config`'s docstring).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flows.config_stages import ConfigError

__all__ = ["format_error", "resolve_paths", "set_dotted", "UniqueKeyLoader", "yaml_error"]


_TAGS = {"gaussian", "aev", "latent", "neuralnetwork", "kernelridge", "gaussianprocess"}


def format_error(source: str, exc: ValidationError) -> str:
    lines, seen = [], []
    for err in exc.errors():
        parts = [
            str(p)
            for p in err["loc"]
            if not str(p).startswith("function-after") and "[" not in str(p)  # union members
        ]
        key = ".".join(parts[:3])
        if key and key in seen:  # another member of the same union: its first complaint is enough
            continue
        seen.append(key)
        if len(parts) > 2 and parts[0] in ("models", "features") and parts[2] in _TAGS:
            del parts[2]  # the union's tag (models.krr.kernelridge.sigma): not a key the user wrote
        loc = ".".join(parts)
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def yaml_error(source: str, exc: yaml.YAMLError) -> str:
    """One line: the file, the position and what is wrong."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{source}: not valid YAML{where}: {problem}"


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _inside(path: Path, root: Path) -> bool:
    """``path`` (made absolute, ``..`` collapsed) and its real location lie under ``root``."""
    lexical = Path(os.path.normpath(path))
    if not lexical.is_relative_to(root):
        return False
    # symbolic links: the real path of the longest part that exists (globs cut at the pattern)
    parts = lexical.parts
    stop = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
    existing = Path(*parts[:stop])
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.resolve().is_relative_to(root)


def _project_root(folder: Path) -> Path:
    """The nearest folder at or above ``folder`` that holds ``.git``; else ``folder``."""
    return next((p for p in (folder, *folder.parents) if (p / ".git").exists()), folder)


def resolve_paths(raw: dict[str, Any], base: Path, source: str) -> None:
    """Resolve ``root``, ``workspace`` and dataset paths in place (see the module docstring)."""
    allow = raw.get("allow_absolute_paths", False) is True
    hint = "set allow_absolute_paths: true to permit it"
    root_raw = raw.get("root", ".")
    if not isinstance(root_raw, str):
        return  # pydantic names the ill-typed key
    if Path(root_raw).is_absolute() and not allow:
        raise ConfigError(f"{source}: root: {root_raw!r} is an absolute path; {hint}")
    root = (base / root_raw).resolve()
    limit = _project_root(base.resolve())
    if not allow and not root.is_relative_to(limit):
        raise ConfigError(
            f"{source}: root: {root_raw!r} climbs above {limit} (the campaign's folder, or the "
            f"repository that holds it); {hint}"
        )
    raw["root"] = str(root)

    def resolve(key: str, value: str) -> str:
        path = root / value  # an absolute value replaces root
        if not allow and not _inside(path, root):
            raise ConfigError(f"{source}: {key}: {value!r} leaves the campaign root {root}; {hint}")
        return os.path.normpath(path)

    workspace = raw.get("workspace", "workspace")
    if isinstance(workspace, str):
        if "://" in workspace:
            raise ConfigError(
                f"{source}: workspace: {workspace!r} must be a local folder; put the Zarr store "
                "on object storage with the store key (store: s3://bucket/store.zarr)"
            )
        raw["workspace"] = resolve("workspace", workspace)
    store = raw.get("store")
    if isinstance(store, str):
        store = store.removeprefix("file://")  # a local path in URL form is a path
        if "://" not in store:  # an object-store URL is the store's own business
            raw["store"] = resolve("store", store)
    tracking = raw.get("tracking")
    uri = tracking.get("uri") if isinstance(tracking, dict) else None
    if isinstance(tracking, dict) and isinstance(uri, str) and uri.startswith("sqlite:///"):
        tracking["uri"] = "sqlite:///" + resolve("tracking.uri", uri[len("sqlite:///") :])
    datasets = raw.get("datasets")
    for name, ds in datasets.items() if isinstance(datasets, dict) else ():
        if isinstance(ds, dict) and isinstance(ds.get("paths"), list):
            ds["paths"] = [
                resolve(f"datasets.{name}.paths", p) if isinstance(p, str) else p
                for p in ds["paths"]
            ]


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str = "--set") -> None:
    node = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{source}: --set {dotted}: {where} is not a mapping")
    node[parts[-1]] = value

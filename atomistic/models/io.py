"""Saving and loading models without pickle.

A model directory holds ``card.json`` (model class, hyperparameters, featurizer name and
parameters, scaler, elements, training dataset key, metrics, and the sha256 of every array file)
and one or more ``*.safetensors`` files of tensors. Loading verifies each file's sha256 against the
card before reading it, and reads tensors with ``safetensors`` only: a pickle (or anything else)
in place of a weight file is refused with an error naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from atomistic.storage import file_sha256

__all__ = ["ModelFileError", "write_model_dir", "read_card", "read_tensors", "CARD"]

CARD = "card.json"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model directory is missing, incomplete, tampered with or not in atompipe's format."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_model_dir(
    directory: str | Path, card: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]]
) -> Path:
    """Write ``tensors`` (file stem -> {name: tensor}) as ``<stem>.safetensors`` and then the card.

    The card is written last, so a directory with a card is complete. Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for stem, group in tensors.items():
        path = directory / f"{stem}.safetensors"
        tmp = path.with_name(path.name + ".tmp")
        safetensors.torch.save_file(
            {k: v.detach().cpu().contiguous() for k, v in group.items()}, str(tmp)
        )
        os.replace(tmp, path)
        files[path.name] = file_sha256(path)
    card = {**card, "format_version": FORMAT_VERSION, "files": files}
    _atomic_write_text(directory / CARD, json.dumps(card, indent=1, sort_keys=True))
    return directory


def read_card(directory: str | Path) -> dict[str, Any]:
    """The parsed ``card.json`` of a model directory."""
    path = Path(directory) / CARD
    if not path.is_file():
        raise ModelFileError(f"{path}: no model card (is {directory} a saved atompipe model?)")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(card, dict) or "model" not in card or "files" not in card:
        raise ModelFileError(f"{path}: not an atompipe model card")
    if card.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {card.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return card


def read_tensors(directory: str | Path, card: dict[str, Any], stem: str) -> dict[str, torch.Tensor]:
    """Tensors of ``<stem>.safetensors`` after checking its sha256 against the card."""
    name = f"{stem}.safetensors"
    path = Path(directory) / name
    expected = card["files"].get(name)
    if expected is None:
        raise ModelFileError(f"{path}: not listed in the model card")
    if not path.is_file():
        raise ModelFileError(f"{path}: weight file is missing")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelFileError(
            f"{path}: sha256 {actual} does not match the model card ({expected}); "
            "the file was modified or corrupted"
        )
    try:
        return safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a safetensors file ({exc}); refusing to load") from exc

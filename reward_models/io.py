"""Saving and loading reward models without pickle.

A model directory holds two files:

- ``reward_model.safetensors``: the stacked member weights and ``reward_scale``.
- ``reward_model.json``: everything needed to rebuild the module: the observation and action
  spaces (type, shape, dtype, bounds or sizes), hidden sizes, member count, seed, reward scale,
  ``architecture`` (``"mlp"``, or ``"cnn"`` with its conv layers and torso width), format
  version, plus any caller metadata under ``"extra"``.

Both are written to a temporary name and renamed into place, so a reader polling the directory
never sees a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prefloop.import_paths import ImportPathError
from prefloop.import_paths import load as load_import_path

from .cnn import CnnRewardEnsemble
from .ensemble import MemberFactory, RewardEnsemble
from .spaces import space_from_json, space_to_json

WEIGHTS_FILE = "reward_model.safetensors"
METADATA_FILE = "reward_model.json"
FORMAT_NAME = "prefloop.reward_model"
FORMAT_VERSION = 1


def save_reward_model(model: RewardEnsemble, directory: str | Path, extra_metadata: dict | None = None) -> None:
    """Write ``directory/reward_model.safetensors`` and ``directory/reward_model.json``.

    The directory is created if needed. ``extra_metadata`` must be JSON-serialisable.

    Raises:
        ValueError: when ``extra_metadata`` cannot be written as JSON.
    """
    directory = Path(directory)
    metadata: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "observation_space": space_to_json(model.observation_space),
        "action_space": space_to_json(model.action_space),
        "n_members": model.n_members,
        "hidden_sizes": list(model.hidden_sizes),
        "seed": model.seed,
        "reward_scale": float(model.reward_scale),
        "member_factory": model.member_factory_name,
        "architecture": model.architecture,
        "action_squares": model.action_squares,
        **(
            {"conv": [list(layer) for layer in model.conv], "torso_features": model.torso_features}
            if isinstance(model, CnnRewardEnsemble) else {}
        ),
        "extra": extra_metadata if extra_metadata is not None else {},
    }
    try:
        text = json.dumps(metadata, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extra_metadata must be JSON-serialisable (no NaN/inf): {exc}") from exc
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS_FILE, lambda path: save_file(tensors, str(path)))
    _atomic_write(directory / METADATA_FILE, lambda path: Path(path).write_text(text + "\n", encoding="utf-8"))


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_reward_metadata(directory: str | Path) -> dict[str, Any]:
    """The parsed ``reward_model.json`` of a model directory (``"extra"`` holds caller metadata).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: it is not valid JSON or not a prefloop reward model description.
    """
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no reward model metadata at {path}; was save_reward_model run on {directory}?")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a prefloop reward model description (missing format={FORMAT_NAME!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {metadata.get('format_version')!r}; this prefloop reads version {FORMAT_VERSION}"
        )
    return metadata


def load_reward_model(
    directory: str | Path, map_location: str | torch.device = "cpu", member_factory: MemberFactory | None = None
) -> RewardEnsemble:
    """Rebuild a model saved by :func:`save_reward_model` (spaces come from the JSON file).

    A model built by a user's ``member_factory`` saved its members' weights and the factory's
    import path: loading imports the factory again from that path, or takes ``member_factory``
    (needed when the factory was defined in a script or inside a function).

    Raises:
        FileNotFoundError: a file is missing (the message names it).
        ValueError: a file is malformed or the weights do not fit the description (names the file).
    """
    directory = Path(directory)
    metadata = load_reward_metadata(directory)
    meta_path = directory / METADATA_FILE
    factory_name = metadata.get("member_factory")
    if factory_name is not None and member_factory is None:
        try:
            member_factory = load_import_path(str(factory_name), "reward model member_factory")
        except ImportPathError as exc:
            raise ValueError(f"{meta_path}: {exc} (load_reward_model(..., member_factory=...))") from None
    try:
        common = dict(
            n_members=int(metadata["n_members"]),
            hidden_sizes=tuple(int(h) for h in metadata["hidden_sizes"]),
            seed=int(metadata.get("seed", 0)),
        )
        observation_space = space_from_json(metadata["observation_space"])
        action_space = space_from_json(metadata["action_space"])
        architecture = metadata.get("architecture", "mlp")  # files before CNNs existed are MLPs
        if architecture == "cnn":
            conv = tuple(tuple(int(v) for v in layer) for layer in metadata["conv"])
            model: RewardEnsemble = CnnRewardEnsemble(  # its members are built in, never a factory's
                observation_space, action_space, conv=conv, torso_features=int(metadata["torso_features"]), **common
            )
        elif architecture == "mlp":
            # files before action_squares existed were written without it
            squares = metadata.get("action_squares", False)
            if not isinstance(squares, bool):
                raise ValueError(f"action_squares must be true or false, got {squares!r}")
            model = RewardEnsemble(observation_space, action_space, member_factory=member_factory,
                                   action_squares=squares, **common)
        else:
            raise ValueError(f"unknown architecture {architecture!r} (expected 'mlp' or 'cnn')")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{meta_path} is malformed: {type(exc).__name__}: {exc}") from exc

    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"no reward model weights at {weights_path}")
    try:
        tensors = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {exc}") from exc
    model.to(map_location)
    # Models saved before input standardisation existed have none: identity, as they were trained.
    for name in ("input_mean", "input_inv_std"):
        if hasattr(model, name):
            tensors.setdefault(name, getattr(model, name).detach().clone())
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path} does not match the model described in {meta_path}: {exc}") from exc
    return model

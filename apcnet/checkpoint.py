"""This project's checkpoint file: the model's constructor arguments, weights and data facts.

The file is a plain `torch.save` dict holding only what `torch.load(..., weights_only=True)`
accepts (tensors, dicts, lists, tuples, str, int, float, bool, None), so loading never runs
pickled code:

    format: "apcnet-checkpoint", format_version: 1, architecture: "APCNet",
    model_arguments: APCNet constructor arguments, state_dict: weights (CPU tensors),
    class_names: [str], palette: [[r, g, b]], ignore_index: int,
    mean: [float], std: [float] (input normalisation, same units as the training pipeline),
    optimizer_state: optimizer.state_dict() or None, extra: dict (e.g. schedule, epoch, config)

Saving is atomic: a temporary file in the same folder is written, fsynced, then renamed.
"""

import os
import pickle
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apcnet.model import APCNet

FORMAT_NAME = "apcnet-checkpoint"
FORMAT_VERSION = 1
ARCHITECTURE = "APCNet"
# Prefixes added to state_dict keys by DistributedDataParallel / DataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_REQUIRED_FIELDS = (
    "format_version",
    "architecture",
    "model_arguments",
    "state_dict",
    "class_names",
    "palette",
    "ignore_index",
    "mean",
    "std",
)


class CheckpointError(ValueError):
    """A file is not a readable checkpoint of this project; the message says what was found."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """Everything a checkpoint file holds; `build_model(loaded)` rebuilds the network.

    Attributes:
        path: the file it was read from.
        format_version: version of the file layout.
        architecture: "APCNet".
        model_arguments: keyword arguments of `APCNet(...)` (without pretrained_backbone).
        state_dict: the weights, tensors on the `map_location` given to `load_checkpoint`.
        class_names: one name per class, index = class id.
        palette: one (r, g, b) colour per class, 0-255.
        ignore_index: label value of unlabelled pixels.
        mean, std: per-channel input normalisation the model was trained with.
        optimizer_state: `optimizer.state_dict()` when saved, else None.
        extra: free-form safe values the trainer stored (schedule state, epoch, config, ...).
    """

    path: str
    format_version: int
    architecture: str
    model_arguments: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    optimizer_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Keys without leading `module.` / `_orig_mod.` (in any order, any number of times)."""
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def _check_safe(value: Any, where: str) -> None:
    """Raise TypeError naming `where` when a value is something weights_only loading refuses.

    Types are matched exactly: subclasses (numpy scalars, enums, namedtuples) pickle as their
    own classes, which safe loading rejects.
    """
    if value is None or type(value) in (str, int, float, bool) or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_safe(item, f"{where}[{index}]")
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"save_checkpoint: {where} has a key {key!r} of type {type(key)}")
            _check_safe(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"save_checkpoint: {where} is a {type(value).__name__}; a checkpoint may only hold "
        f"tensors, dicts, lists, tuples, str, int, float, bool and None (convert it, e.g. "
        f"dataclasses.asdict, str(path), .tolist(), float(x))"
    )


def _to_cpu(value: Any) -> Any:
    """A copy of nested containers with every tensor detached and moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(item) for item in value)
    return value


def _check_data_facts(
    num_classes: int,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    mean: Sequence[float],
    std: Sequence[float],
) -> None:
    if len(class_names) != num_classes or not all(isinstance(n, str) for n in class_names):
        raise ValueError(
            f"save_checkpoint: class_names must be {num_classes} strings (the model's "
            f"num_classes); got {len(class_names)}: {list(class_names)[:5]}..."
        )
    if len(palette) != num_classes or any(
        len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour) for colour in palette
    ):
        raise ValueError(
            f"save_checkpoint: palette must hold {num_classes} [r, g, b] colours with values "
            f"0-255; got {len(palette)} entries"
        )
    if len(mean) != len(std) or any(float(s) <= 0 for s in std):
        raise ValueError(
            f"save_checkpoint: mean and std must have one value per channel and std > 0; "
            f"got mean {list(mean)}, std {list(std)}"
        )


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    ignore_index: int = 255,
    mean: Sequence[float],
    std: Sequence[float],
    optimizer_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` (an APCNet, possibly DDP-wrapped or compiled) and its data facts to `path`.

    The parent folder is created. The file appears complete or not at all: it is written under
    a temporary name in the same folder, fsynced and renamed over `path`. Tensors are stored on
    the CPU. `extra` and `optimizer_state` must hold only weights_only-safe values (TypeError
    naming the offending entry otherwise). Returns the path written.
    """
    path = Path(path)
    network = unwrap_model(model)
    arguments = getattr(network, "arguments", None)
    if not isinstance(arguments, dict) or "num_classes" not in arguments:
        raise TypeError(
            f"save_checkpoint({str(path)!r}): the model ({type(network).__name__}) has no "
            f"`arguments` dict with num_classes; only APCNet models can be saved"
        )
    _check_data_facts(arguments["num_classes"], class_names, palette, mean, std)
    for name, value in (
        ("model_arguments", arguments),
        ("optimizer_state", optimizer_state),
        ("extra", extra),
    ):
        _check_safe(None if value is None else dict(value), name)
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": type(network).__name__,
        "model_arguments": dict(arguments),
        "state_dict": strip_wrapper_prefixes(_to_cpu(network.state_dict())),
        "class_names": [str(name) for name in class_names],
        "palette": [[int(c) for c in colour] for colour in palette],
        "ignore_index": int(ignore_index),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "optimizer_state": None if optimizer_state is None else _to_cpu(dict(optimizer_state)),
        "extra": {} if extra is None else _to_cpu(dict(extra)),
    }
    write_atomically(path, lambda temporary: torch.save(payload, temporary))
    return path


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Make `path` appear complete or not at all: `write(temporary)` fills a temporary file in
    the same folder (created if needed), which is fsynced and renamed over `path`. Nothing is
    left behind when `write` raises. The temporary name keeps the suffix (torch.export.save
    wants .pt2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    unique = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    temporary = path.with_name(f".{path.stem}.{unique}.tmp{path.suffix}")
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # Persist the rename itself; not every file system lets a folder be opened (best effort).
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def _describe_foreign(content: Any, source: str) -> str:
    """A message saying what a non-project checkpoint file looks like and what to do."""
    if not isinstance(content, dict):
        return f"{source} is not an apcnet checkpoint: it holds a {type(content).__name__}"
    weights = content.get("state_dict", content)
    keys = [str(key) for key in weights] if isinstance(weights, dict) else []
    reference_prefixes = ("decode_head.", "auxiliary_head.", "backbone.stem.")
    if "meta" in content or any(key.startswith(reference_prefixes) for key in keys):
        return (
            f"{source} looks like a reference-toolbox (MMSegmentation) checkpoint (keys like "
            f"{keys[:3]}), not an apcnet checkpoint: build the model with "
            f"apcnet.from_mmseg({source}) instead"
        )
    if keys and all(isinstance(value, torch.Tensor) for value in weights.values()):
        return (
            f"{source} is a bare state dict ({len(keys)} tensors, e.g. {keys[:3]}), not an "
            f"apcnet checkpoint: it lacks the model arguments and class names; build the model "
            f"yourself and call load_state_dict, then save it with apcnet.checkpoint.save_checkpoint"
        )
    return (
        f"{source} is not an apcnet checkpoint: it has no format marker {FORMAT_NAME!r} "
        f"(top-level keys {sorted(map(str, content))[:10]})"
    )


def _read_file(path: Path, map_location: Any) -> Any:
    source = repr(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {source} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint {source} cannot be loaded safely: it is corrupt, or it holds Python "
            f"objects other than tensors and plain containers, so it was not written by "
            f"apcnet.checkpoint.save_checkpoint; for a reference-toolbox (MMSegmentation) "
            f"checkpoint use apcnet.from_mmseg ({torch_load_reason(error)})"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {source} is unreadable (truncated or corrupt file?): "
            f"{torch_load_reason(error)}"
        ) from error


def torch_load_reason(error: BaseException) -> str:
    """torch.load's reason in one sentence, so that a job reports it on one line: the detail
    after "WeightsUnpickler error:" when there is one (the rest is advice about weights_only),
    else the first sentence. The whole text stays on the chained exception."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0].split(". ", 1)[0].removesuffix(".")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> LoadedCheckpoint:
    """Read a file written by `save_checkpoint`, safely (weights_only=True).

    Raises FileNotFoundError when it does not exist, and CheckpointError (a ValueError) naming
    the path and what was found when the file is unreadable, is another kind of checkpoint
    (e.g. a reference-toolbox one: use `apcnet.from_mmseg`), a bare state dict, or holds a
    different architecture or a newer format version.
    """
    path = Path(path)
    source = repr(str(path))
    content = _read_file(path, map_location)
    if not isinstance(content, dict) or content.get("format") != FORMAT_NAME:
        raise CheckpointError(_describe_foreign(content, source))
    missing = [name for name in _REQUIRED_FIELDS if name not in content]
    if missing:
        raise CheckpointError(f"checkpoint {source} is incomplete: it lacks {missing}")
    version = content["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"checkpoint {source} has format_version {version!r}; this code reads versions 1 to "
            f"{FORMAT_VERSION}: upgrade apcnet to load it"
        )
    if content["architecture"] != ARCHITECTURE:
        raise CheckpointError(
            f"checkpoint {source} holds a {content['architecture']!r} model; only "
            f"{ARCHITECTURE!r} checkpoints can be built by this project"
        )
    return LoadedCheckpoint(
        path=str(path),
        format_version=version,
        architecture=content["architecture"],
        model_arguments=dict(content["model_arguments"]),
        state_dict=strip_wrapper_prefixes(content["state_dict"]),
        class_names=tuple(content["class_names"]),
        palette=tuple((int(r), int(g), int(b)) for r, g, b in content["palette"]),
        ignore_index=int(content["ignore_index"]),
        mean=tuple(float(m) for m in content["mean"]),
        std=tuple(float(s) for s in content["std"]),
        optimizer_state=content.get("optimizer_state"),
        extra=dict(content.get("extra") or {}),
    )


def build_model(loaded: LoadedCheckpoint) -> APCNet:
    """An APCNet (eval mode) with the checkpoint's architecture and weights, loaded strictly.

    Call `.train()` to continue training and `.to(device)` to move it.
    """
    try:
        model = APCNet(**loaded.model_arguments)
    except TypeError as error:
        raise CheckpointError(
            f"checkpoint {loaded.path!r}: its model_arguments {loaded.model_arguments} do not "
            f"fit APCNet ({error})"
        ) from error
    try:
        model.load_state_dict(loaded.state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {loaded.path!r}: the weights do not match "
            f"APCNet(**{loaded.model_arguments}): {error}"
        ) from error
    return model.eval()


def load_model(path: str | Path, map_location: Any = "cpu") -> tuple[APCNet, LoadedCheckpoint]:
    """`load_checkpoint` + `build_model`: the ready model (eval mode) and everything else saved."""
    loaded = load_checkpoint(path, map_location)
    return build_model(loaded), loaded

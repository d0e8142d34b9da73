"""Reading saved weights, for every task: one check that a state dict fits a model, and loaders that turn a
truncated or foreign file into an error naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from latentlab.errors import LatentLabError


class WeightsError(LatentLabError):
    """Saved weights do not fit the model they are loaded into, or the file holding them is damaged."""


def _listed(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(
    expected: Mapping[str, Any],
    given: Mapping[str, Any],
    source: str | Path,
    what: str = "this model",
    optional: Callable[[str], bool] | None = None,
    hint: str = "",
) -> None:
    """Raise ``WeightsError`` naming every missing, unexpected and mis-shaped key of ``given`` against ``expected``.

    Both map names to tensors (or anything with ``.shape``). ``optional(name)`` marks expected keys that may be
    absent (an inference export without its decoder, say). ``hint`` says what the user can do about a mismatch.
    """
    missing = sorted(k for k in expected.keys() - given.keys() if not (optional and optional(k)))
    unexpected = sorted(given.keys() - expected.keys())
    mis_shaped = sorted(k for k in expected.keys() & given.keys() if tuple(expected[k].shape) != tuple(given[k].shape))
    if not (missing or unexpected or mis_shaped):
        return
    parts = []
    if missing:
        parts.append(f"missing {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected {_listed(unexpected)}")
    if mis_shaped:
        shapes = [f"{k} {tuple(given[k].shape)} (expected {tuple(expected[k].shape)})" for k in mis_shaped]
        parts.append(f"mis-shaped {_listed(shapes, 3)}")
    raise WeightsError(f"{source}: weights do not fit {what}: {'; '.join(parts)}{('; ' + hint) if hint else ''}")


def load_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning ``.ckpt`` as a dict; a truncated or foreign file is a ``WeightsError`` naming it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    try:
        # mmap: tensors are read when used, so checking a resume's checkpoint does not read it all before Lightning
        # loads it again; a cut file still fails here (its zip directory is at the end).
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
        raise WeightsError(
            f"{path}: cannot be read as a checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
            "it is truncated or damaged: use an earlier step*.ckpt of the run, or train again"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WeightsError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """A ``.safetensors`` file's tensors; a truncated or foreign file is a ``WeightsError`` naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises SafetensorError / OSError on a cut file
        raise WeightsError(
            f"{path}: cannot be read as safetensors ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
            "the file is truncated or damaged: export it again"
        ) from None


def strip_prefixes(state: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """The entries of ``state`` under the first of ``prefixes`` that any key has, with that prefix removed."""
    for prefix in prefixes:
        picked = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked
    return {}

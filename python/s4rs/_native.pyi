"""Type stubs of the native module (the PyO3 binding); the documented API is ``s4rs``."""

from typing import Any, Callable, Dict, List, Optional, Tuple, final

import numpy as np

__all__ = [
    "hippo",
    "dplr",
    "init_ssm",
    "ssm_kernel",
    "ssm_kernel_naive",
    "fft_conv",
    "encode_text",
    "decode_text",
    "train",
    "train_preset",
    "train_lm",
    "distill",
    "retain_freed_memory",
    "State",
    "Layer",
    "Model",
    "LanguageModel",
    "Calibration",
    "__version__",
]

__version__: str

def hippo(measure: str, n: int) -> Tuple[np.ndarray, np.ndarray]: ...
def dplr(measure: str, n: int) -> Dict[str, np.ndarray]: ...
def init_ssm(config_json: str) -> Dict[str, Optional[np.ndarray]]: ...
def ssm_kernel(
    lambda_: np.ndarray,
    p: Optional[np.ndarray],
    b: np.ndarray,
    c: np.ndarray,
    dt: np.ndarray,
    length: int,
    disc: Optional[str] = None,
    double: bool = False,
) -> np.ndarray: ...
def ssm_kernel_naive(
    lambda_: np.ndarray,
    p: Optional[np.ndarray],
    b: np.ndarray,
    c: np.ndarray,
    dt: np.ndarray,
    length: int,
    disc: Optional[str] = None,
) -> np.ndarray: ...
def fft_conv(
    u: np.ndarray, k: np.ndarray, k_bwd: Optional[np.ndarray] = None, d: Optional[np.ndarray] = None, double: bool = False
) -> np.ndarray: ...
def retain_freed_memory() -> bool: ...
def encode_text(text: str) -> List[int]: ...
def decode_text(ids: List[int]) -> str: ...
def train(
    task: str,
    out: str,
    config_json: Optional[str] = None,
    preset: Optional[str] = None,
    data: Optional[str] = None,
    sizes: Optional[Tuple[int, int, int]] = None,
    seed: int = 0,
    resume: bool = False,
    threads: Optional[int] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> str: ...
def train_preset(name: Optional[str] = None, task: Optional[str] = None) -> str: ...
def train_lm(
    data: str,
    out: str,
    model_json: str,
    config_json: str,
    resume: bool = False,
    threads: Optional[int] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> str: ...
def distill(
    verifier: str,
    data: str,
    out: str,
    model_json: str,
    config_json: str,
    resume: bool = False,
    threads: Optional[int] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> str: ...

@final
class State:
    @property
    def batch(self) -> int: ...
    def copy(self) -> "State": ...
    def __copy__(self) -> "State": ...
    def __deepcopy__(self, memo: Any) -> "State": ...
    def numpy(self) -> Any: ...

@final
class Layer:
    @staticmethod
    def from_config(config_json: str, double: bool = False) -> "Layer": ...
    @staticmethod
    def load(path: str, double: bool = False) -> "Layer": ...
    def save(self, path: str) -> None: ...
    def config_json(self) -> str: ...
    @property
    def double(self) -> bool: ...
    def forward(
        self, x: np.ndarray, lengths: Optional[List[int]] = None, state: Optional[State] = None, return_state: bool = False
    ) -> Tuple[np.ndarray, Optional[State]]: ...
    def zero_state(self, batch: int) -> State: ...
    def step(self, state: State, u: np.ndarray) -> np.ndarray: ...
    def kernel(self, length: int) -> np.ndarray: ...

@final
class Model:
    @staticmethod
    def from_config(config_json: str, double: bool = False) -> "Model": ...
    @staticmethod
    def causal_lm_config(vocab_size: int) -> str: ...
    @staticmethod
    def load(path: str, double: bool = False) -> "Model": ...
    @staticmethod
    def import_official(weights: str, config_json: str, double: bool = False) -> "Model": ...
    def export_official(self, weights: str, to: str = "sequence-model") -> str: ...
    def save(self, path: str, weights: Optional[str] = None) -> None: ...
    def config_json(self) -> str: ...
    @property
    def double(self) -> bool: ...
    def forward(
        self, x: np.ndarray, lengths: Optional[List[int]] = None, state: Optional[State] = None, return_state: bool = False
    ) -> Tuple[np.ndarray, Optional[State]]: ...
    def zero_state(self, batch: int) -> State: ...
    def prefill(self, tokens: np.ndarray) -> Tuple[np.ndarray, State]: ...
    def step(self, state: State, x: np.ndarray) -> np.ndarray: ...

@final
class LanguageModel:
    @staticmethod
    def load(path: str, weights: Optional[str] = None, matmul_precision: Optional[str] = None) -> "LanguageModel": ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def context(self) -> Optional[int]: ...
    @property
    def is_transformer(self) -> bool: ...
    def logits(self, tokens: np.ndarray) -> np.ndarray: ...
    def generate(self, prompt: List[int], config_json: str) -> Dict[str, Any]: ...
    def speculate(
        self, draft: "LanguageModel", prompt: List[int], config_json: str, calibration: Optional["Calibration"] = None
    ) -> Dict[str, Any]: ...

@final
class Calibration:
    def __init__(self) -> None: ...
    @property
    def generations(self) -> int: ...

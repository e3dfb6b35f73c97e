#!/usr/bin/env python3
"""Whole models of the official PyTorch code (state-spaces/s4), for fixtures and round-trip checks.

Needs torch, numpy, safetensors and einops (a git-ignored venv; never in CI) and a checkout of
state-spaces/s4 (`--official DIR`). The `S4Model` class is taken from the checkout's `example.py`
as it stands (its source is read and executed on its own, without the script's training code).

  # fixtures: build example.py's S4Model (eval mode), save its state dict, an input and its output
  python tools/official_models.py fixtures --official DIR --out tests/fixtures/official-models

  # the training repository's SequenceModel with its task encoder and decoder, under the names of
  # a Lightning checkpoint (model.*, encoder.0.*, decoder.0.*); also writes a .ckpt for convert_official.py
  python tools/official_models.py sequence-fixtures --official DIR --out tests/fixtures/official-models

  # the other way: load a state dict exported by `s4 export-official` into the official module
  # (example.py's S4Model, or SequenceModel with its encoder and decoder, by the config's "module") with
  # load_state_dict(strict=True), run it on INPUT (B, L, d_input) or tokens (B, L) and compare with
  # EXPECTED (B, d_output)
  python tools/official_models.py check --official DIR --weights W.safetensors --config CONFIG.json \
      --input x.npy --expected y.npy
"""

import argparse
import ast
import json
import pathlib
import sys

import numpy as np


def example_s4model(official: pathlib.Path):
    """The S4Model class of example.py, executed alone with the names its body uses."""
    sys.path.insert(0, str(official))
    import torch  # noqa: F401
    import torch.nn as nn
    from models.s4.s4d import S4D

    source = (official / "example.py").read_text()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "S4Model")
    namespace = {
        "nn": nn,
        "S4D": S4D,
        "dropout_fn": nn.Dropout1d if hasattr(nn, "Dropout1d") else nn.Dropout,
        "args": argparse.Namespace(lr=0.01),
    }
    exec(compile(ast.Module(body=[cls], type_ignores=[]), "example.py", "exec"), namespace)
    return namespace["S4Model"]


CASES = {
    "example-postnorm": dict(d_input=3, d_output=5, d_model=8, n_layers=2, dropout=0.0, prenorm=False),
    "example-prenorm": dict(d_input=3, d_output=5, d_model=8, n_layers=2, dropout=0.0, prenorm=True),
}


def fixtures(args):
    import torch
    from safetensors.torch import save_file

    S4Model = example_s4model(args.official)
    for name, kwargs in CASES.items():
        torch.manual_seed(0)
        model = S4Model(**kwargs).eval()
        # perturb the norms so that their weights are exercised (LayerNorm starts at 1 and 0)
        with torch.no_grad():
            for norm in model.norms:
                norm.weight.add_(0.1 * torch.randn_like(norm.weight))
                norm.bias.add_(0.1 * torch.randn_like(norm.bias))
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(2, 64, kwargs["d_input"], generator=gen)
        with torch.no_grad():
            y = model(x)
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
        np.save(out / "input.npy", x.numpy())
        np.save(out / "output.npy", y.numpy())
        config = {
            "module": "S4Model",
            "kwargs": {**kwargs, "d_state": 64},
            "source": "example.py of state-spaces/s4 at e757cef, torch " + torch.__version__ + ", CPU, eval mode",
            "input_layout": "BLD (batch, length, d_input)",
            "output_layout": "BD (batch, d_output)",
        }
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        print(f"{name}: {len(model.state_dict())} tensors, output {tuple(y.shape)}, max|y| {y.abs().max():.3f}")


SEQUENCE_LAYER = dict(_name_="s4", channels=1, activation="gelu", final_act="glu", rank=1, dt_min=0.001, dt_max=0.1,
                      lr=dict(dt=None, A=0.001, B=0.001), l_max=None, gate=None, bottleneck=None, mult_act=None,
                      initializer=None, weight_norm=False, layer="fftconv", postact=None, wd=0.0, drop_kernel=0.0,
                      deterministic=False, verbose=False)
SEQUENCE_CASES = {
    # the LRA ListOps shape at a small size: token embedding, postnorm BatchNorm, layer-level bidirectional DPLR
    "sequence-listops": dict(
        model=dict(_name_="model", d_model=8, n_layers=2, prenorm=False, norm="batch", dropout=0.0, tie_dropout=True,
                   transposed=False, bidirectional=False, residual="R", pool=dict(_name_="pool", stride=1, expand=None),
                   track_norms=True, layer=dict(SEQUENCE_LAYER, d_state=4, mode="nplr", init="legs", n_ssm=1,
                                                bidirectional=True, dt_transform="softplus")),
        encoder="embedding", decoder=dict(_name_="sequence", mode="pool"), n_tokens=10, d_input=None, d_output=4),
    # features in, prenorm LayerNorm (and the final norm), S4D layers, the last position read out
    "sequence-prenorm-s4d": dict(
        model=dict(_name_="model", d_model=8, n_layers=2, prenorm=True, norm="layer", dropout=0.0, transposed=False,
                   bidirectional=False, residual="R", track_norms=True,
                   layer=dict(SEQUENCE_LAYER, d_state=8, mode="diag", init="diag-inv", disc="zoh", n_ssm=None,
                              bidirectional=False, dt_transform="exp")),
        encoder="linear", decoder=dict(_name_="sequence", mode="last"), n_tokens=None, d_input=3, d_output=5),
}


def sequence_fixtures(args):
    import copy
    import torch
    import torch.nn as nn
    from safetensors.torch import save_file

    sys.path.insert(0, str(args.official))
    from src.models.sequence.backbones.model import SequenceModel
    from src.tasks.decoders import SequenceDecoder
    import src.models.nn.utils as U

    for name, case in SEQUENCE_CASES.items():
        torch.manual_seed(0)
        model_cfg = copy.deepcopy(case["model"])
        layer = model_cfg.pop("layer")
        model_cfg.pop("_name_")
        backbone = SequenceModel(layer=[layer], **model_cfg)
        d = model_cfg["d_model"]
        enc = nn.Embedding(case["n_tokens"], d) if case["encoder"] == "embedding" else nn.Linear(case["d_input"], d)
        # the task's encoder and decoder as the Lightning module wraps them (train.py: PassthroughSequential)
        encoder = U.PassthroughSequential(None, U.PassthroughSequential(enc))
        decoder = U.PassthroughSequential(
            U.PassthroughSequential(SequenceDecoder(d, case["d_output"], l_output=0, mode=case["decoder"]["mode"])), None)
        gen = torch.Generator().manual_seed(1)
        if case["encoder"] == "embedding":
            x = torch.randint(0, case["n_tokens"], (3, 50), generator=gen)
        else:
            x = torch.randn(3, 50, case["d_input"], generator=gen)

        def run(x):
            h, _ = encoder(x)
            h, _ = backbone(h)
            y, _ = decoder(h)
            return y

        with torch.no_grad():
            for m in backbone.modules():  # exercise the norms: perturbed affine weights, trained running statistics
                if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
                    m.weight.add_(0.1 * torch.randn_like(m.weight))
                    m.bias.add_(0.1 * torch.randn_like(m.bias))
            backbone.train()
            for _ in range(3):
                run(x)
            backbone.eval()
            y = run(x)
        state = {**{"model." + k: v for k, v in backbone.state_dict().items()},
                 **{"encoder." + k: v for k, v in encoder.state_dict().items()},
                 **{"decoder." + k: v for k, v in decoder.state_dict().items()}}
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors")
        torch.save({"state_dict": state, "hyper_parameters": {"model": case["model"], "encoder": case["encoder"],
                                                              "decoder": case["decoder"]}}, args.out / f"{name}.ckpt")
        np.save(out / "input.npy", x.numpy().astype(np.int64 if case["encoder"] == "embedding" else np.float32))
        np.save(out / "output.npy", y.numpy())
        config = {"module": "SequenceModel", "model": case["model"], "encoder": case["encoder"], "decoder": case["decoder"],
                  "source": "src/models/sequence/backbones/model.py of state-spaces/s4 at e757cef with the task encoder "
                            "and decoder as train.py wraps them; torch " + torch.__version__ + ", CPU, eval mode",
                  "input_layout": "BL (tokens)" if case["encoder"] == "embedding" else "BLD (batch, length, d_input)",
                  "output_layout": "BD (batch, d_output)"}
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        print(f"{name}: {len(state)} tensors, output {tuple(y.shape)}, max|y| {y.abs().max():.3f}")


def sequence_module(official: pathlib.Path, cfg: dict, state: dict):
    """The training repository's SequenceModel with its task encoder and decoder, wrapped as the
    Lightning module holds them (attributes model, encoder, decoder), sized from the state dict."""
    import copy
    import torch.nn as nn

    sys.path.insert(0, str(official))
    from src.models.sequence.backbones.model import SequenceModel
    from src.tasks.decoders import SequenceDecoder
    import src.models.nn.utils as U

    model_cfg = copy.deepcopy(cfg["model"])
    layer = model_cfg.pop("layer")
    model_cfg.pop("_name_", None)
    d = model_cfg["d_model"]
    enc_w = state["encoder.0.weight"]
    enc = nn.Embedding(*enc_w.shape) if cfg["encoder"] == "embedding" else nn.Linear(enc_w.shape[1], d)
    d_output = state["decoder.0.output_transform.weight"].shape[0]

    class Lightning(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = SequenceModel(layer=[layer], **model_cfg)
            self.encoder = U.PassthroughSequential(None, U.PassthroughSequential(enc))
            l_output = cfg.get("l_output", 0)  # the dataset's; null keeps every position
            self.decoder = U.PassthroughSequential(
                U.PassthroughSequential(SequenceDecoder(d, d_output, l_output=l_output, mode=cfg["decoder"]["mode"])), None)

        def forward(self, x):
            h, _ = self.encoder(x)
            h, _ = self.model(h)
            y, _ = self.decoder(h)
            return y

    return Lightning()


def check(args):
    import torch
    from safetensors.torch import load_file

    cfg = json.loads(args.config.read_text())
    state = load_file(args.weights)
    if cfg.get("module") == "SequenceModel":
        model = sequence_module(args.official, cfg, state).eval()
    else:
        S4Model = example_s4model(args.official)
        kwargs = dict(cfg.get("kwargs", cfg))
        d_state = kwargs.pop("d_state", 64)
        if d_state != 64:
            sys.exit(f"d_state = {d_state}: example.py's S4Model builds S4D with the default d_state = 64")
        model = S4Model(**kwargs).eval()
    model.load_state_dict(state, strict=True)
    x = torch.from_numpy(np.load(args.input))
    with torch.no_grad():
        y = model(x).numpy()
    expected = np.load(args.expected)
    if expected.ndim == 3 and expected.shape[2] == y.shape[1] and expected.shape[1] != 1:
        expected = expected.transpose(0, 2, 1)  # per position: s4's (B, d_output, L) as the official (B, L, d_output)
    expected = expected.reshape(y.shape)
    rel = float(np.max(np.abs(y - expected)) / np.max(np.abs(y)))
    print(json.dumps({"module": cfg.get("module"), "strict_load": True,
                      "max_abs_diff": float(np.max(np.abs(y - expected))), "relative": rel}))
    if rel > 1e-4:
        sys.exit(f"outputs differ: relative {rel:.2e} > 1e-4")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("sequence-fixtures", help="write the SequenceModel fixtures")
    q.add_argument("--official", type=pathlib.Path, required=True)
    q.add_argument("--out", type=pathlib.Path, required=True)
    f = sub.add_parser("fixtures", help="write the whole-model fixtures")
    f.add_argument("--official", type=pathlib.Path, required=True)
    f.add_argument("--out", type=pathlib.Path, required=True)
    c = sub.add_parser("check", help="load exported weights into the official class and compare outputs")
    c.add_argument("--official", type=pathlib.Path, required=True)
    c.add_argument("--weights", type=pathlib.Path, required=True)
    c.add_argument("--config", type=pathlib.Path, required=True)
    c.add_argument("--input", type=pathlib.Path, required=True)
    c.add_argument("--expected", type=pathlib.Path, required=True)
    args = p.parse_args()
    {"fixtures": fixtures, "sequence-fixtures": sequence_fixtures, "check": check}[args.cmd](args)


if __name__ == "__main__":
    main()

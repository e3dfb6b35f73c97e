#!/usr/bin/env python3
"""Whole models of the official PyTorch code (state-spaces/s4), for fixtures and round-trip checks.

Needs torch, numpy, safetensors and einops (a git-ignored venv; never in CI) and a checkout of
state-spaces/s4 (`--official DIR`). The `S4Model` class is taken from the checkout's `example.py`
as it stands (its source is read and executed on its own, without the script's training code).

  # fixtures: build example.py's S4Model (eval mode), save its state dict, an input and its output
  python tools/official_models.py fixtures --official DIR --out tests/fixtures/official-models

  # the other way: load a state dict exported by `s4 export-official` into the official class with
  # load_state_dict(strict=True), run it on INPUT (B, L, d_input) and compare with EXPECTED (B, d_output)
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


def check(args):
    import torch
    from safetensors.torch import load_file

    S4Model = example_s4model(args.official)
    cfg = json.loads(args.config.read_text())
    kwargs = dict(cfg.get("kwargs", cfg))
    d_state = kwargs.pop("d_state", 64)
    if d_state != 64:
        sys.exit(f"d_state = {d_state}: example.py's S4Model builds S4D with the default d_state = 64")
    model = S4Model(**kwargs).eval()
    model.load_state_dict(load_file(args.weights), strict=True)
    x = torch.from_numpy(np.load(args.input))
    with torch.no_grad():
        y = model(x).numpy()
    expected = np.load(args.expected).reshape(y.shape)
    rel = float(np.max(np.abs(y - expected)) / np.max(np.abs(y)))
    print(json.dumps({"strict_load": True, "max_abs_diff": float(np.max(np.abs(y - expected))), "relative": rel}))
    if rel > 1e-4:
        sys.exit(f"outputs differ: relative {rel:.2e} > 1e-4")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
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
    fixtures(args) if args.cmd == "fixtures" else check(args)


if __name__ == "__main__":
    main()

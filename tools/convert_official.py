#!/usr/bin/env python3
"""Convert an official state-spaces/s4 PyTorch checkpoint (.pt / .pth / .ckpt) to safetensors for `s4 import-official`.

Usage:
    pip install torch safetensors
    python3 tools/convert_official.py MODEL.pt --out model.safetensors [--prefix PREFIX] [--kwargs KWARGS.json --config-out config.json]

The input may be a bare state_dict (torch.save(module.state_dict(), ...)), a dict holding one under 'model' or
'state_dict' (example.py and PyTorch Lightning checkpoints), or a pickled module. With --prefix, only the keys
that start with it are kept and the prefix is removed, so one layer of a deep checkpoint can be extracted, e.g.
--prefix model.layers.0.layer. for a Lightning checkpoint of the training repository (whose S4Block keys then read
layer.kernel.C, output_linear.0.weight, ...). Complex parameters are already stored by the official code as real
tensors with a trailing dimension of 2; they are written as they are. Everything is written as float32 except
integer buffers (l_kernel stays int64).

A Lightning checkpoint of the training repository converts whole with --module SequenceModel --config-out
config.json: all tensors keep their names (model.layers.*, encoder.0.*, decoder.0.*), and the config takes the
model/encoder/decoder sections of the checkpoint's hyper_parameters (the experiment's Hydra config).

--kwargs KWARGS.json names the keyword arguments the module was constructed with (d_model, d_state, mode, init,
dt_transform, bidirectional, channels, n_ssm, ...); with --config-out they are wrapped as
{"module": ..., "kwargs": ...} for `s4 import-official MODEL.safetensors --config CONFIG.json --out DIR`.
"""
import argparse
import json
import sys


def state_dict_of(obj):
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return state_dict_of(obj[key])
        return obj
    raise SystemExit(f"error: unsupported checkpoint object of type {type(obj).__name__}")


def to_plain(x):
    """An OmegaConf/Hydra config (as Lightning saves hyper_parameters) as plain dicts and lists."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(x):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:
        pass
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="the .pt/.pth/.ckpt file")
    ap.add_argument("--out", required=True, help="output .safetensors")
    ap.add_argument("--prefix", default="", help="keep only keys with this prefix, and strip it")
    ap.add_argument("--module", default="S4Block", choices=["S4Block", "S4D", "S4Model", "SequenceModel"],
                    help="official module (for --config-out): a layer, example.py's whole S4Model, or a training-repository "
                         "checkpoint whole (SequenceModel: its Hydra config's model/encoder/decoder sections are taken from "
                         "the checkpoint's hyper_parameters, or from --kwargs)")
    ap.add_argument("--kwargs", help="JSON file with the module's constructor keyword arguments")
    ap.add_argument("--config-out", help="write {'module', 'kwargs'} here for s4 import-official")
    a = ap.parse_args()

    import torch
    from safetensors.torch import save_file

    obj = torch.load(a.checkpoint, map_location="cpu", weights_only=False)
    sd = state_dict_of(obj)
    out = {}
    for k, v in sd.items():
        if not torch.is_tensor(v) or not k.startswith(a.prefix):
            continue
        name = k[len(a.prefix):]
        if v.is_complex():
            v = torch.view_as_real(v)
        if v.is_floating_point():
            v = v.to(torch.float32)
        out[name] = v.detach().contiguous().clone()
    if not out:
        sys.exit(f"error: no tensors{' with prefix ' + repr(a.prefix) if a.prefix else ''} in {a.checkpoint}")
    save_file(out, a.out)
    if a.config_out and a.module == "SequenceModel":
        hp = json.load(open(a.kwargs)) if a.kwargs else to_plain(obj.get("hyper_parameters", {}) if isinstance(obj, dict) else {})
        missing = [k for k in ("model", "encoder", "decoder") if k not in hp]
        if missing:
            sys.exit(f"error: no {', '.join(missing)} section in the checkpoint's hyper_parameters (give the Hydra config with --kwargs)")
        json.dump({"module": "SequenceModel", **{k: hp[k] for k in ("model", "encoder", "decoder")}}, open(a.config_out, "w"), indent=1)
    elif a.config_out:
        kwargs = json.load(open(a.kwargs)) if a.kwargs else {}
        json.dump({"module": a.module, "kwargs": kwargs}, open(a.config_out, "w"), indent=1)
    print(json.dumps({"out": a.out, "tensors": {k: list(v.shape) for k, v in out.items()}, "config": a.config_out}))


if __name__ == "__main__":
    main()

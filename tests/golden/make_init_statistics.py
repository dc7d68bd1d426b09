"""Measures the initial weight distributions of mdistiller's 23 CIFAR models.

Imports the reference model files (`mdistiller_cifar_*.py`, verbatim copies of
megvii-research/mdistiller's `mdistiller/models/cifar/*.py`) from `--peer_dir`,
builds each model of the zoo at 100 classes with several torch seeds, and pools
every parameter's initial values over the re-initializations until it has at
least `--min_samples` values (a parameter equal everywhere in the builds of seeds
0 and 1 is a constant). It writes `init_statistics.npz` next to this script: per
zoo model and torch parameter, the module kind, the torch shape, and the mean,
standard deviation (ddof 0) and excess kurtosis of the pooled values (kurtosis NaN
for a constant), plus the peer commit, the torch version and the SHA-256 of each
reference file.

    python tests/golden/make_init_statistics.py --peer_dir ../shared/reference/peer

Needs PyTorch (`pip install torch`); the tests that read the fixture do not.
"""

import argparse
import contextlib
import hashlib
import importlib.util
import io
import math
import sys
import time
import types
from pathlib import Path

import numpy as np

PEER_COMMIT = "a08d46f"
OUTPUT = Path(__file__).with_name("init_statistics.npz")
# Reference module -> file in --peer_dir (mdistiller/models/cifar/<module>.py).
FILES = {
    module: f"mdistiller_cifar_{module}.py"
    for module in (
        "resnet",
        "resnetv2",
        "wrn",
        "vgg",
        "mobilenetv2",
        "ShuffleNetv1",
        "ShuffleNetv2",
    )
}
# Zoo name -> (mdistiller's `cifar_model_dict` name, module, constructor); the
# constructors of mdistiller/models/cifar/__init__.py, all called num_classes=100.
MODELS = {
    **{
        f"resnet{d}": (f"resnet{d}", "resnet", f"resnet{d}")
        for d in (8, 14, 20, 32, 44, 56, 110)
    },
    "resnet8x4": ("resnet8x4", "resnet", "resnet8x4"),
    "resnet32x4": ("resnet32x4", "resnet", "resnet32x4"),
    "resnet18": ("ResNet18", "resnetv2", "ResNet18"),
    "resnet50": ("ResNet50", "resnetv2", "ResNet50"),
    **{
        f"wrn_{d}_{w}": (f"wrn_{d}_{w}", "wrn", f"wrn_{d}_{w}")
        for d in (16, 40)
        for w in (1, 2)
    },
    **{f"vgg{d}": (f"vgg{d}", "vgg", f"vgg{d}_bn") for d in (8, 11, 13, 16, 19)},
    "mobilenetv2": ("MobileNetV2", "mobilenetv2", "mobile_half"),
    "shufflenetv1": ("ShuffleV1", "ShuffleNetv1", "ShuffleV1"),
    "shufflenetv2": ("ShuffleV2", "ShuffleNetv2", "ShuffleV2"),
}


def load_peer_modules(peer_dir):
    """Imports the reference files as `peer_cifar.<module>` without copying them.

    The files sit in one flat folder under other names, so a stub package
    `peer_cifar` stands for `mdistiller.models.cifar`: a relative import of a
    sibling (`from .resnet import ...`) finds the module loaded before it.
    """
    package = types.ModuleType("peer_cifar")
    package.__path__ = []
    sys.modules["peer_cifar"] = package
    modules = {}
    for module, file in FILES.items():
        name = f"peer_cifar.{module}"
        spec = importlib.util.spec_from_file_location(name, Path(peer_dir) / file)
        modules[module] = importlib.util.module_from_spec(spec)
        sys.modules[name] = modules[module]
        spec.loader.exec_module(modules[module])
    return modules


def parameter_kinds(model):
    """`{parameter name: kind}`, kind `<module type>.<weight|bias>`."""
    import torch.nn as nn

    kinds = {}
    for module_name, module in model.named_modules():
        kind = {nn.Conv2d: "conv", nn.Linear: "linear", nn.BatchNorm2d: "bn"}.get(
            type(module)
        )
        for param_name, _ in module.named_parameters(recurse=False):
            if kind is None:
                raise TypeError(f"Unexpected parameter owner {type(module)}.")
            prefix = f"{module_name}." if module_name else ""
            kinds[prefix + param_name] = f"{kind}.{param_name}"
    return kinds


def measure(constructor, min_samples):
    """Pools each parameter over re-initializations; returns rows and the builds."""
    import torch

    def build(seed):
        torch.manual_seed(seed)
        with contextlib.redirect_stdout(io.StringIO()):  # mobile_half prints
            model = constructor()
        return {
            name: p.detach().double().numpy().ravel().copy()
            for name, p in model.named_parameters()
        }, model

    first, model = build(0)
    kinds = parameter_kinds(model)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    second, _ = build(1)
    pools = {name: [first[name], second[name]] for name in first}
    constant = {
        name: np.ptp(np.concatenate(pool)) == 0.0 for name, pool in pools.items()
    }
    builds = 2
    needs = [
        name
        for name in pools
        if not constant[name] and sum(map(len, pools[name])) < min_samples
    ]
    while needs:
        values, _ = build(builds)
        builds += 1
        for name in needs:
            pools[name].append(values[name])
        needs = [name for name in needs if sum(map(len, pools[name])) < min_samples]
    rows = []
    for name, pool in pools.items():
        x = np.concatenate(pool)
        mean, std = x.mean(), x.std()
        kurtosis = np.mean((x - mean) ** 4) / std**4 - 3.0 if std > 0 else math.nan
        rows.append((name, kinds[name], shapes[name], mean, std, kurtosis, x.size))
    return rows, builds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer_dir", required=True, help="folder of the files")
    parser.add_argument("--peer_commit", default=PEER_COMMIT)
    parser.add_argument("--min_samples", type=int, default=20_000)
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    modules = load_peer_modules(args.peer_dir)
    arrays = {
        "peer_commit": np.array(args.peer_commit),
        "torch_version": np.array(torch.__version__),
        "min_samples": np.array(args.min_samples),
        "peer_files": np.array(list(FILES.values())),
        "peer_sha256": np.array(
            [
                hashlib.sha256((Path(args.peer_dir) / f).read_bytes()).hexdigest()
                for f in FILES.values()
            ]
        ),
        "models": np.array(list(MODELS)),
        "reference_names": np.array([ref for ref, _, _ in MODELS.values()]),
    }
    print(f"mdistiller @ {args.peer_commit}, torch {torch.__version__}")
    for zoo, (reference, module, constructor_name) in MODELS.items():
        start = time.time()
        constructor = getattr(modules[module], constructor_name)
        rows, builds = measure(
            lambda c=constructor: c(num_classes=100), args.min_samples
        )
        names, kinds, shapes, means, stds, kurtoses, samples = zip(*rows, strict=True)
        arrays[f"{zoo}/names"] = np.array(names)
        arrays[f"{zoo}/kinds"] = np.array(kinds)
        arrays[f"{zoo}/shapes"] = np.array(["x".join(map(str, s)) for s in shapes])
        arrays[f"{zoo}/mean"] = np.array(means)
        arrays[f"{zoo}/std"] = np.array(stds)
        arrays[f"{zoo}/kurtosis"] = np.array(kurtoses)
        arrays[f"{zoo}/samples"] = np.array(samples)
        print(
            f"{zoo:13s} = {reference:11s} = {module}.{constructor_name}: "
            f"{len(rows)} parameters, "
            f"{builds} builds, {time.time() - start:.0f} s"
        )
    np.savez_compressed(args.output, **arrays)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size} bytes)")


if __name__ == "__main__":
    main()

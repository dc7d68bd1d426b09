"""Measures the reference CIFAR zoo: logits and feature taps from ported weights.

Imports mdistiller's CIFAR model files (megvii-research/mdistiller @ a08d46f,
`mdistiller/models/cifar/*.py`) from `--source`, where they are named
`mdistiller_cifar_<file>.py`: `resnet.py`, `resnetv2.py`, `wrn.py`, `vgg.py`,
`mobilenetv2.py`, `ShuffleNetv1.py`, `ShuffleNetv2.py`.

For each of the 23 CIFAR zoo models it builds the reference at 100 classes (the
constructor that mdistiller's `cifar_model_dict` names for it), records its
`state_dict` keys and shapes, loads the seeded NumPy state dict of
`make_imagenet_zoo.random_state_dict` (seed `SEED`; BatchNorm running means and
variances random, so inference-mode BatchNorm is tested) and records the float64
logits, in inference mode, of two seeded standard-normal 32x32 images
(`make_imagenet_zoo.random_images`), and every feature tap of mdistiller's
`feats` dict (`feats`, `preact_feats`, `pooled_feat`) as `summarize` reduces
it: per-channel spatial mean and mean square of a feature map, the pooled
vector whole (keys `<model>/tap/<tap>/<i>`, `<model>/tap/pooled_feat`). The
test regenerates the state dict and the images with the same functions, so the
fixture holds no weights. It writes
`cifar_zoo.npz` next to this script, with the torch version, the mdistiller
commit and the SHA-256 of each source file.

    pip install torch==2.13.0
    python tests/golden/make_cifar_zoo.py --source PEER

Importing this file does not import torch: the test reads `MODELS`, `SEED`,
`IMAGE_SIZE` and `summarize` from it.
"""

import argparse
import contextlib
import hashlib
import importlib.util
import io
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a script: `golden` is a folder of tests/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from golden.make_imagenet_zoo import (  # noqa: E402
    random_images,
    random_state_dict,
    shape_string,
)

OUTPUT = Path(__file__).with_name("cifar_zoo.npz")
SEED = 20240523
MDISTILLER_COMMIT = "a08d46f"
NUM_CLASSES = 100
IMAGE_SIZE = 32
# Zoo name -> (reference file in --source, the constructor mdistiller's
# `cifar_model_dict` (models/cifar/__init__.py) names for it).
MODELS = {
    **{
        f"resnet{depth}": ("mdistiller_cifar_resnet.py", f"resnet{depth}")
        for depth in ("8", "14", "20", "32", "44", "56", "110", "8x4", "32x4")
    },
    "resnet18": ("mdistiller_cifar_resnetv2.py", "ResNet18"),
    "resnet50": ("mdistiller_cifar_resnetv2.py", "ResNet50"),
    **{
        name: ("mdistiller_cifar_wrn.py", name)
        for name in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")
    },
    **{
        f"vgg{depth}": ("mdistiller_cifar_vgg.py", f"vgg{depth}_bn")
        for depth in (8, 11, 13, 16, 19)
    },
    "mobilenetv2": ("mdistiller_cifar_mobilenetv2.py", "mobile_half"),
    "shufflenetv1": ("mdistiller_cifar_ShuffleNetv1.py", "ShuffleV1"),
    "shufflenetv2": ("mdistiller_cifar_ShuffleNetv2.py", "ShuffleV2"),
}
SOURCES = sorted({file for file, _ in MODELS.values()})


def _load_sources(source):
    modules = {}
    for file in SOURCES:
        spec = importlib.util.spec_from_file_location(Path(file).stem, source / file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[file] = module
    return modules


def _build(modules, name):
    file, constructor = MODELS[name]
    builder = getattr(modules[file], constructor)
    # mobile_half takes the classes positionally and prints (T, width).
    with contextlib.redirect_stdout(io.StringIO()):
        if constructor == "mobile_half":
            return builder(NUM_CLASSES)
        return builder(num_classes=NUM_CLASSES)


def summarize(tap):
    """A float64 tap `[n, h, w, c]` or `[n, c]` as its fixture arrays.

    A feature map as the per-image, per-channel spatial mean and mean square
    (`[2, n, c]`: a wrong sign, ReLU or channel order shows in one or the
    other); a vector as itself (`[1, n, c]`).
    """
    tap = np.asarray(tap, np.float64)
    if tap.ndim == 2:
        return tap[None].astype(np.float32)
    return np.stack([tap.mean(axis=(1, 2)), (tap**2).mean(axis=(1, 2))]).astype(
        np.float32
    )


def tap_summaries(name, feats):
    """`{f"{name}/tap/<tap>[/<i>]": summary}` of mdistiller's `feats` dict."""
    record = {}
    for tap in ("feats", "preact_feats"):
        for i, value in enumerate(feats.get(tap, [])):
            nhwc = value.permute(0, 2, 3, 1).numpy()
            record[f"{name}/tap/{tap}/{i}"] = summarize(nhwc)
    record[f"{name}/tap/pooled_feat"] = summarize(feats["pooled_feat"].numpy())
    return record


def _measure(torch, model, name, record):
    state = model.state_dict()
    keys = list(state)
    shapes = [tuple(value.shape) for value in state.values()]
    record[f"{name}/keys"] = np.array(keys)
    record[f"{name}/shapes"] = np.array([shape_string(s) for s in shapes])
    ported = random_state_dict(keys, shapes, seed=SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in ported.items()})
    model.eval()
    images = torch.from_numpy(random_images(IMAGE_SIZE, IMAGE_SIZE, seed=SEED))
    images = images.permute(0, 3, 1, 2)
    with torch.no_grad():
        logits32 = model(images)[0].double()
        model.double()
        logits, feats = model(images.double())
    record[f"{name}/logits"] = logits.numpy()
    record.update(tap_summaries(name, feats))
    return float(logits.abs().max()), float((logits32 - logits).abs().max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    modules = _load_sources(args.source)
    record = {
        "seed": np.int64(SEED),
        "num_classes": np.int64(NUM_CLASSES),
        "image_size": np.int64(IMAGE_SIZE),
        "models": np.array(list(MODELS)),
        "torch_version": np.array(torch.__version__),
        "mdistiller_commit": np.array(MDISTILLER_COMMIT),
        "sources": np.array(SOURCES),
        "source_sha256": np.array(
            [
                hashlib.sha256((args.source / f).read_bytes()).hexdigest()
                for f in SOURCES
            ]
        ),
    }
    for name in MODELS:
        start = time.time()
        scale, float32_error = _measure(torch, _build(modules, name), name, record)
        print(
            f"{name}: logits max |.| {scale:.4g}, torch float32 vs float64 max "
            f"error {float32_error:.3g} ({float32_error / scale:.2g} of the "
            f"largest; {time.time() - start:.1f} s)"
        )
    np.savez_compressed(OUTPUT, **record)
    print(f"Wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

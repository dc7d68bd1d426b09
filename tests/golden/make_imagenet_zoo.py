"""Measures the reference ImageNet models: counts and logits from ported weights.

Imports the reference model files from `--peer_dir`:

- `torchvision_resnet.py`: torchvision 0.28.0's `torchvision/models/resnet.py`
  (copied from the installed wheel; imported as a module of the installed
  torchvision, whose relative imports it uses);
- `mdistiller_imagenet_mobilenetv1.py` and `mdistiller_imagenet_resnet.py`:
  megvii-research/mdistiller @ fae6658 (unchanged at a08d46f),
  `mdistiller/models/imagenet/mobilenetv1.py` and `resnet.py` (whose ResNets
  return mdistiller's feature taps).

For each ImageNet zoo model it builds the reference at 1000 classes and records
its trainable parameter count, its number of `BatchNorm2d` layers and of their
running-statistic values, and its `state_dict` keys and shapes. It then loads the
seeded NumPy state dict `random_state_dict` (below; the test regenerates it with
this same code), runs two seeded images (`random_images`) in float64 in
inference mode, and records the logits and the spatial mean of the feature maps
that mdistiller's feature losses compare (each under its zoo layer name), and
every feature tap of mdistiller's `feats` dict (`<model>/tap/...`, reduced as
`make_cifar_zoo.summarize` does; for the ResNets from mdistiller's own ImageNet
ResNet with the same weights). It writes `imagenet_zoo.npz` next to this
script, with the torch and torchvision versions and the SHA-256 of each source
file.

    pip install torch==2.13.0 && pip install --no-deps torchvision==0.28.0
    python tests/golden/make_imagenet_zoo.py --peer_dir PEER

torchvision 0.28.0 imports on this CPU torch once `torch.library.register_fake`
is a no-op, which this script sets. Importing this file does not import torch:
the tests use `random_state_dict` and `random_images` from it.
"""

import argparse
import hashlib
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).with_name("imagenet_zoo.npz")
SEED = 20240316
MDISTILLER_COMMIT = "fae6658"
# Zoo name -> (reference file in --peer_dir, constructor, input height and width).
# Odd, non-multiple-of-32 sizes exercise the padding of every strided layer;
# mdistiller's MobileNetV1 needs 193 to 224 pixels (its `AvgPool2d(7)`).
MODELS = {
    "resnet18_imagenet": ("torchvision_resnet.py", "resnet18", (75, 75)),
    "resnet34_imagenet": ("torchvision_resnet.py", "resnet34", (75, 75)),
    "resnet50_imagenet": ("torchvision_resnet.py", "resnet50", (75, 75)),
    "mobilenetv1_imagenet": (
        "mdistiller_imagenet_mobilenetv1.py",
        "MobileNetV1",
        (201, 201),
    ),
}
NUM_IMAGES = 2
# BatchNorm entry -> (Generator method, its two parameters).
_BATCH_NORM_DRAWS = {
    "weight": ("uniform", 0.5, 1.5),
    "bias": ("normal", 0.0, 0.2),
    "running_mean": ("normal", 0.0, 0.2),
    "running_var": ("uniform", 0.5, 2.0),
}


def random_state_dict(keys, shapes, seed=SEED):
    """A float32 state dict of modest scale, drawn in `keys` order from `seed`.

    Convolution and linear weights `normal(0, sqrt(1 / fan_in))`, other biases
    `uniform(-0.1, 0.1)`; BatchNorm weight `uniform(0.5, 1.5)`, bias and running
    mean `normal(0, 0.2)`, running variance `uniform(0.5, 2)`;
    `num_batches_tracked` an int64 scalar.

    Args:
        keys: the PyTorch keys, in `state_dict` order.
        shapes: their shapes.
        seed: the seed of the draws.

    Returns:
        A dict `{key: np.ndarray}` in PyTorch layout.
    """
    rng = np.random.default_rng([seed, 0])
    batch_norms = {
        key.rsplit(".", 1)[0] for key in keys if key.endswith("running_mean")
    }
    state_dict = {}
    for key, shape in zip(keys, shapes, strict=True):
        module, leaf = key.rsplit(".", 1)
        shape = tuple(shape)
        if leaf == "num_batches_tracked":
            state_dict[key] = np.array(rng.integers(1, 1000), np.int64)
            continue
        if module in batch_norms:
            method, a, b = _BATCH_NORM_DRAWS[leaf]
            value = getattr(rng, method)(a, b, shape)
        elif leaf == "weight":
            value = rng.normal(0.0, np.sqrt(1.0 / np.prod(shape[1:])), shape)
        else:
            value = rng.uniform(-0.1, 0.1, shape)
        state_dict[key] = value.astype(np.float32)
    return state_dict


def random_images(height, width, seed=SEED):
    """`NUM_IMAGES` standard-normal float32 images `[n, height, width, 3]`."""
    rng = np.random.default_rng([seed, 1])
    return rng.standard_normal((NUM_IMAGES, height, width, 3), dtype=np.float32)


def shape_string(shape):
    """`(64, 3, 7, 7)` as `"64x3x7x7"` (a scalar as `""`)."""
    return "x".join(str(d) for d in shape)


def fixture_keys_and_shapes(fixture, name):
    """The state dict keys and shapes the fixture records for model `name`."""
    keys = [str(key) for key in fixture[f"{name}/keys"]]
    shapes = [
        tuple(int(d) for d in str(shape).split("x") if d)
        for shape in fixture[f"{name}/shapes"]
    ]
    return keys, shapes


def _load_references(peer_dir):
    import torch

    torch.library.register_fake = lambda *args, **kwargs: lambda fn: fn
    import torchvision
    from torchvision.models import _api

    # The copy registers the same builders as the installed torchvision's
    # `resnet.py`, which the registry refuses; the registry is not used here.
    _api.register_model = lambda name=None: lambda fn: fn
    modules = {}
    for file, package in (
        ("torchvision_resnet.py", "torchvision.models"),
        ("mdistiller_imagenet_mobilenetv1.py", None),
        ("mdistiller_imagenet_resnet.py", None),
    ):
        name = f"{package}.peer_{Path(file).stem}" if package else Path(file).stem
        spec = importlib.util.spec_from_file_location(name, Path(peer_dir) / file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        modules[file] = module
    return torch, torchvision, modules


def _feature_modules(model, name):
    """`{zoo layer name: torch module whose output it is}`, or `None` (MobileNet)."""
    if name.startswith("mobilenet"):
        return None
    features = {"stem_bn": model.bn1}
    for s in range(1, 5):
        stage = getattr(model, f"layer{s}")
        features[f"stage{s}_block{len(stage) - 1}_out"] = stage
    return features


def _mdistiller_resnet_taps(modules, constructor, state_dict, images):
    """The tap summaries of mdistiller's ImageNet ResNet with `state_dict`."""
    import torch
    from make_cifar_zoo import tap_summaries  # it imports this file

    model = getattr(modules["mdistiller_imagenet_resnet.py"], constructor)()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    # Its AvgPool2d(7) is the global average at 224 pixels; the fixture's
    # smaller images need the adaptive one, which it equals there.
    model.avgpool = torch.nn.AdaptiveAvgPool2d(1)
    with torch.no_grad():
        _, feats = model.eval().double()(images.double())
    return tap_summaries(f"{constructor}_imagenet", feats)


def _recorder(outputs, layer):
    """A hook storing a copy of the output (the ReLU after `bn1` is in place)."""

    def hook(module, inputs, output):
        outputs[layer] = output.clone()

    return hook


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer_dir", required=True)
    args = parser.parse_args()
    torch, torchvision, modules = _load_references(args.peer_dir)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    record = {
        "seed": np.int64(SEED),
        "num_images": np.int64(NUM_IMAGES),
        "models": np.array(list(MODELS)),
        "torch_version": np.array(torch.__version__),
        "torchvision_version": np.array(torchvision.__version__),
        "mdistiller_commit": np.array(MDISTILLER_COMMIT),
        "sources": np.array(
            [
                "pytorch/vision v0.28.0 torchvision/models/resnet.py",
                f"megvii-research/mdistiller@{MDISTILLER_COMMIT} "
                "mdistiller/models/imagenet/mobilenetv1.py",
                f"megvii-research/mdistiller@{MDISTILLER_COMMIT} "
                "mdistiller/models/imagenet/resnet.py",
            ]
        ),
        "source_sha256": np.array(
            [
                hashlib.sha256((Path(args.peer_dir) / f).read_bytes()).hexdigest()
                for f in (
                    "torchvision_resnet.py",
                    "mdistiller_imagenet_mobilenetv1.py",
                    "mdistiller_imagenet_resnet.py",
                )
            ]
        ),
    }
    for name, (file, constructor, (height, width)) in MODELS.items():
        start = time.time()
        model = getattr(modules[file], constructor)().eval()
        batch_norms = [
            m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
        ]
        state = model.state_dict()
        keys = list(state)
        shapes = [tuple(v.shape) for v in state.values()]
        record[f"{name}/trainable"] = np.int64(
            sum(p.numel() for p in model.parameters() if p.requires_grad)
        )
        record[f"{name}/batch_norms"] = np.int64(len(batch_norms))
        record[f"{name}/bn_statistics"] = np.int64(
            sum(m.running_mean.numel() + m.running_var.numel() for m in batch_norms)
        )
        record[f"{name}/keys"] = np.array(keys)
        record[f"{name}/shapes"] = np.array([shape_string(s) for s in shapes])
        record[f"{name}/input_shape"] = np.array([height, width, 3], np.int64)

        ported = random_state_dict(keys, shapes)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in ported.items()})
        images = torch.from_numpy(random_images(height, width)).permute(0, 3, 1, 2)
        outputs = {}
        feature_modules = _feature_modules(model, name)
        for layer, module in (feature_modules or {}).items():
            module.register_forward_hook(_recorder(outputs, layer))
        with torch.no_grad():
            logits32 = model(images)
            model.double()
            logits = model(images.double())
        if feature_modules is None:  # mdistiller's (logits, feats)
            from make_cifar_zoo import tap_summaries  # it imports this file

            logits32, (logits, feats) = logits32[0], logits
            record.update(tap_summaries(name, feats))
            for layer, feature in zip(
                (f"block{k}_pointwise_bn" for k in (3, 5, 11, 13)),
                feats["preact_feats"],
                strict=True,
            ):
                outputs[layer] = feature
            outputs["avgpool"] = feats["pooled_feat"]
        else:
            record.update(_mdistiller_resnet_taps(modules, constructor, ported, images))
        record[f"{name}/logits"] = logits.numpy().astype(np.float32)
        layers = list(outputs)
        record[f"{name}/feature_layers"] = np.array(layers)
        for layer in layers:
            value = outputs[layer].double()
            value = value.mean(dim=(2, 3)) if value.ndim == 4 else value
            record[f"{name}/feature/{layer}"] = value.numpy().astype(np.float32)
        scale = float(logits.abs().max())
        float32_error = float((logits32.double() - logits).abs().max())
        print(
            f"{name}: trainable {int(record[f'{name}/trainable'])}, "
            f"{len(batch_norms)} BatchNorm, logits max |.| {scale:.4g}, "
            f"torch float32 vs float64 max error {float32_error:.3g} "
            f"({time.time() - start:.1f} s)"
        )
    np.savez_compressed(OUTPUT, **record)
    print(f"Wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

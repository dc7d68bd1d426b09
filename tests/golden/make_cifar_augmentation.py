"""Makes `cifar_augmentation.npz`: the CSKD code's CIFAR-100 view, by torchvision.

    pip install torch==2.13.0 torchvision==0.28.0   # CPU; only for this script
    python tests/golden/make_cifar_augmentation.py \
        --reference ../shared/reference/peer/lud_dataset_cifar100.py

`--reference` is the verbatim dataset file of llieeai/lud @ 2704bb2
(`mdistiller/dataset/cifar100.py`); its `get_cifar100_train_transform()`
(`RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `ToTensor()`,
`Normalize(CIFAR-100 mean, std)`) is imported from there, never copied. The
fixture holds a few fixed random uint8 32x32x3 images and, for each sample
(an image, a crop offset `(i, j)` in the padded image, a flip), the transform's
output with `RandomCrop.get_params` patched to return that offset and
`torch.rand` to force the flip, as float32 HWC.

torchvision's compiled ops do not load against a CPU-only torch 2.13 build;
its pure-Python transforms do, once `torch.library.register_fake` is a no-op.
"""

import argparse
import hashlib
import importlib.util
from pathlib import Path
from unittest import mock

import numpy as np

PEER_COMMIT = "2704bb2"
SEED = 20_240_229
NUM_IMAGES = 4
# (image, i, j, flip): the corners 0 and 8 of the offsets, the centre and a few more.
SAMPLES = (
    (0, 0, 0, False),
    (1, 8, 8, True),
    (2, 0, 8, False),
    (3, 8, 0, True),
    (0, 4, 4, False),
    (1, 4, 4, True),
    (2, 2, 7, True),
    (3, 5, 1, False),
    (0, 8, 3, True),
)


def load_reference(path):
    import torch

    # torchvision registers fake kernels for C ops that this torch lacks; set
    # before torchvision is first imported.
    torch.library.register_fake = lambda *args, **kwargs: lambda function: function
    spec = importlib.util.spec_from_file_location("lud_dataset_cifar100", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def transform_at(transform, image, i, j, flip):
    """The reference transform of a uint8 HWC image at offset (i, j), maybe flipped."""
    import torch
    from PIL import Image
    from torchvision import transforms

    calls = []

    def get_params(img, output_size):
        calls.append("crop")
        return i, j, *output_size

    def rand(*size, **kwargs):
        calls.append("flip")
        return torch.tensor([0.0 if flip else 1.0])  # `torch.rand(1) < p` flips

    with (
        mock.patch.object(
            transforms.RandomCrop, "get_params", staticmethod(get_params)
        ),
        mock.patch.object(torch, "rand", rand),
    ):
        output = transform(Image.fromarray(image))
    assert calls == ["crop", "flip"], calls
    return output.numpy().transpose(1, 2, 0).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, type=Path)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "cifar_augmentation.npz"
    )
    args = parser.parse_args()

    reference = load_reference(args.reference)
    import torch
    import torchvision

    transform = reference.get_cifar100_train_transform()
    normalize = transform.transforms[-1]
    images = np.random.default_rng(SEED).integers(
        0, 256, (NUM_IMAGES, 32, 32, 3), dtype=np.uint8
    )
    outputs = np.stack(
        [transform_at(transform, images[k], i, j, flip) for k, i, j, flip in SAMPLES]
    )
    samples = np.array(SAMPLES, dtype=np.int64)
    np.savez_compressed(
        args.output,
        images=images,
        image_index=samples[:, 0],
        offsets=samples[:, 1:3],
        flips=samples[:, 3].astype(bool),
        outputs=outputs,
        mean=np.array(normalize.mean, np.float64),
        std=np.array(normalize.std, np.float64),
        padding=np.int64(4),
        peer_commit=PEER_COMMIT,
        reference_sha256=hashlib.sha256(args.reference.read_bytes()).hexdigest(),
        versions=f"torch {torch.__version__}, torchvision {torchvision.__version__}",
    )
    print(f"wrote {args.output}: {len(SAMPLES)} samples of {NUM_IMAGES} images")


if __name__ == "__main__":
    main()

"""Makes `imagenet_transforms.npz`: torchvision's ImageNet transforms on fixed inputs.

    pip install torch==2.13.0 torchvision==0.28.0   # CPU; only for this script
    python tests/golden/make_imagenet_transforms.py

torchvision is a pip package, imported as installed (no peer sources); the
fixture records its version, torch's and Pillow's (Pillow does the resizing:
torchvision resizes PIL images with `Image.resize(size, BILINEAR)`). Its
inputs are made here from a fixed seed: three synthetic RGB images of odd
sizes (smooth gradients, sharp-edged shapes and pixel noise), saved as JPEGs
(Pillow, quality 90, 4:2:0 chroma subsampling) whose bytes are the fixture's
inputs (`jpegs`, cut at `jpeg_ends`). Each is opened as torchvision's
`ImageFolder` opens files (`Image.open(f).convert("RGB")`), then:

- train samples: `RandomResizedCrop(size)` and `RandomHorizontalFlip()` with
  `RandomResizedCrop.get_params` patched to return fixed crops `(i, j, h, w)`
  (edge cases among them: the whole image, one pixel, one row, one column,
  the bottom-right corner, a crop of exactly the output size) and `torch.rand`
  to force the flip; the uint8 output at 224 (four samples) and at 32 (the
  rest; the 224 ones stored as PNG files), and for three of the latter the
  float32 output of `ToTensor()` and `Normalize(ImageNet mean, std)` as well
  (HWC);
- eval samples: `Resize(256)`, `CenterCrop(224)` of every image (uint8, as
  PNG files), and
  `CenterCrop(40)` of a 20x30 crop (padded with zeros, as torchvision does);
- `get_params` draws: for image sizes from 1x1 to 20x500 and torch seeds
  0..24, the ten area fractions and log aspect ratios it draws (NaN after the
  accepted attempt) and its `(i, j, h, w)`; the fallback is taken whenever no
  attempt fits.

torchvision's compiled ops do not load against a CPU-only torch 2.13 build;
its pure-Python transforms do, once `torch.library.register_fake` is a no-op.
"""

import argparse
import io
from pathlib import Path
from unittest import mock

import numpy as np

SEED = 20_240_516
IMAGE_SHAPES = ((375, 500), (517, 333), (64, 47))
JPEG_QUALITY = 90
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (image, size, (i, j, h, w), flip).
TRAIN_SAMPLES = (
    (0, 224, (47, 61, 301, 402), False),
    (1, 224, (0, 0, 517, 333), True),
    (1, 224, (200, 17, 150, 120), False),
    (2, 224, (3, 5, 40, 30), True),
    (0, 32, (0, 0, 375, 500), False),
    (0, 32, (0, 0, 1, 1), True),
    (0, 32, (374, 0, 1, 500), False),
    (0, 32, (0, 499, 375, 1), False),
    (0, 32, (343, 468, 32, 32), True),
    (1, 32, (500, 300, 17, 33), False),
    (1, 32, (10, 20, 33, 31), True),
    (1, 32, (100, 100, 5, 7), False),
    (2, 32, (0, 0, 64, 47), True),
    (2, 32, (1, 2, 61, 44), False),
)
NORMALIZED = (4, 8, 12)  # indices of TRAIN_SAMPLES also stored normalised
PARAM_SHAPES = ((375, 500), (517, 333), (64, 47), (20, 500), (500, 20), (1, 1), (3, 2))
PARAM_SEEDS = 25
SCALE, RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)


def import_torchvision():
    import torch

    # torchvision registers fake kernels for C ops that this torch lacks; set
    # before torchvision is first imported.
    torch.library.register_fake = lambda *args, **kwargs: lambda function: function
    import torchvision

    return torch, torchvision


def synthetic_image(rng, height, width):
    """Smooth colour gradients, sharp-edged rectangles and pixel noise."""
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3))
    for channel in range(3):
        fx, fy, phase = rng.uniform(0.01, 0.15, 2).tolist() + [rng.uniform(0, 6)]
        image[..., channel] = 128 + 90 * np.sin(fx * columns + fy * rows + phase)
    for _ in range(6):
        top, left = rng.integers(0, height), rng.integers(0, width)
        bottom = top + rng.integers(1, max(2, height // 3))
        right = left + rng.integers(1, max(2, width // 3))
        image[top:bottom, left:right] = rng.integers(0, 256, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def jpeg_bytes(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def png_bytes(image):
    """Lossless and far smaller than the raw pixels of smooth images."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def concatenated(files):
    """Byte strings as one uint8 array and the offsets where each ends."""
    return np.frombuffer(b"".join(files), np.uint8), np.cumsum([len(f) for f in files])


def open_rgb(data):
    """A JPEG's bytes opened as torchvision's `ImageFolder` loader opens files."""
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def train_output(torch, transforms, image, size, crop, flip, normalized=False):
    """`RandomResizedCrop(size)` and `RandomHorizontalFlip()` at fixed draws."""
    calls = []

    def get_params(img, scale, ratio):
        calls.append("crop")
        return crop

    def rand(*shape, **kwargs):
        calls.append("flip")
        return torch.tensor([0.0 if flip else 1.0])  # `torch.rand(1) < p` flips

    steps = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    if normalized:
        steps += [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    with (
        mock.patch.object(
            transforms.RandomResizedCrop, "get_params", staticmethod(get_params)
        ),
        mock.patch.object(torch, "rand", rand),
    ):
        output = transforms.Compose(steps)(image)
    assert calls == ["crop", "flip"], calls
    if normalized:
        return output.numpy().transpose(1, 2, 0).astype(np.float32)
    return np.asarray(output, dtype=np.uint8)


def recorded_get_params(torch, transforms, height, width, seed):
    """`get_params` on a `height` x `width` image after `torch.manual_seed(seed)`:
    `(scales [10], log ratios [10], (i, j, h, w))`, NaN where it drew nothing."""
    draws = []
    uniform = torch.Tensor.uniform_

    def recording_uniform(self, *args, **kwargs):
        result = uniform(self, *args, **kwargs)
        draws.append(result.item())
        return result

    torch.manual_seed(seed)
    with mock.patch.object(torch.Tensor, "uniform_", recording_uniform):
        params = transforms.RandomResizedCrop.get_params(
            torch.zeros(3, height, width), list(SCALE), list(RATIO)
        )
    draws = np.array(draws, np.float64)
    scales = np.full(10, np.nan)
    log_ratios = np.full(10, np.nan)
    scales[: len(draws[0::2])] = draws[0::2]
    log_ratios[: len(draws[1::2])] = draws[1::2]
    return scales, log_ratios, params


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).parent / "imagenet_transforms.npz",
    )
    args = parser.parse_args()

    torch, torchvision = import_torchvision()
    import PIL
    from torchvision import transforms

    rng = np.random.default_rng(SEED)
    jpegs = [jpeg_bytes(synthetic_image(rng, *shape)) for shape in IMAGE_SHAPES]
    images = [open_rgb(data) for data in jpegs]

    train = {224: [], 32: []}
    for index, size, crop, flip in TRAIN_SAMPLES:
        output = train_output(torch, transforms, images[index], size, crop, flip)
        train[size].append(output)
    normalized = [
        train_output(torch, transforms, images[k], s, c, f, normalized=True)
        for k, s, c, f in (TRAIN_SAMPLES[n] for n in NORMALIZED)
    ]
    evaluation = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224)]
    )
    eval_outputs = [np.asarray(evaluation(image), np.uint8) for image in images]
    small = images[2].crop((5, 10, 35, 30))  # 30 wide, 20 high
    padded_crop = np.asarray(transforms.CenterCrop(40)(small), np.uint8)

    scales, log_ratios, params, shapes = [], [], [], []
    for height, width in PARAM_SHAPES:
        for seed in range(PARAM_SEEDS):
            drawn = recorded_get_params(torch, transforms, height, width, seed)
            scales.append(drawn[0])
            log_ratios.append(drawn[1])
            params.append(drawn[2])
            shapes.append((height, width))

    samples = np.array([(k, s, *c, f) for k, s, c, f in TRAIN_SAMPLES], np.int64)
    jpeg_data, jpeg_ends = concatenated(jpegs)
    train_png, train_png_ends = concatenated([png_bytes(x) for x in train[224]])
    eval_png, eval_png_ends = concatenated([png_bytes(x) for x in eval_outputs])
    np.savez_compressed(
        args.output,
        jpegs=jpeg_data,
        jpeg_ends=jpeg_ends,
        image_shapes=np.array(IMAGE_SHAPES, np.int64),
        train_image_index=samples[:, 0],
        train_size=samples[:, 1],
        train_crop=samples[:, 2:6],
        train_flip=samples[:, 6].astype(bool),
        train_224_png=train_png,
        train_224_png_ends=train_png_ends,
        train_32=np.stack(train[32]),
        normalized_index=np.array(NORMALIZED, np.int64),
        normalized=np.stack(normalized),
        eval_224_png=eval_png,
        eval_224_png_ends=eval_png_ends,
        padded_crop_input=np.asarray(small, np.uint8),
        padded_crop_40=padded_crop,
        params_shape=np.array(shapes, np.int64),
        params_scales=np.array(scales, np.float64),
        params_log_ratios=np.array(log_ratios, np.float64),
        params=np.array(params, np.int64),
        mean=np.array(MEAN, np.float64),
        std=np.array(STD, np.float64),
        versions=(
            f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"Pillow {PIL.__version__}"
        ),
    )
    print(
        f"wrote {args.output} ({args.output.stat().st_size} bytes): "
        f"{len(TRAIN_SAMPLES)} train and {len(images)} eval samples, "
        f"{len(params)} get_params draws"
    )


if __name__ == "__main__":
    main()

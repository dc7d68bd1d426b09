"""Makes the golden fixture of mdistiller's VID.

    pip install torch==2.13.0   # CPU build; only for this script, never for CI
    python tests/golden/make_vid.py --source=../shared/reference/peer

`--source` holds verbatim copies of megvii-research/mdistiller @ a08d46f's
`distillers/VID.py`, `_base.py`, `_common.py` (`mdistiller_VID.py`,
`mdistiller__base.py`, `mdistiller__common.py`), `engine/cfg.py`
(`mdistiller_engine_cfg.py`; yacs stubbed) and `models/cifar/*.py`. Their code
is imported from there, never copied; only the numbers are committed, in
`vid.npz` next to this script:

- `teacher_feats<i>`, `student_feats<i>` (i = 1..3, `feats[1:]`): fixed
  float32 NHWC features of a batch of 4, post-ReLU; the student's stage 1 is
  twice the teacher's height (the student is pooled), stage 2 equal, stage 3
  half (the teacher is pooled).
- `<case>/regressor<i>/conv<j>`: the regressors' weights (torch seed 0) as
  Keras kernels `[1, 1, in, out]`; `<case>/log_scale<i>`; `<case>/loss_kd`:
  `forward_train`'s `loss_kd` (cfg.py's weights); `<case>/grad_feats<i>`: its
  gradient with respect to the student features (NHWC);
  `<case>/grad_log_scale<i>`: with respect to `log_scales` (which mdistiller
  never trains). Cases: `init` (the log-scales as built, `INIT_PRED_VAR` 5)
  and `random_scales` (log-scales set to seeded normal values).
- `extra_parameters/<teacher>,<student>`: `get_extra_parameters()` of VID
  built on mdistiller's own models, for every pair of the CIFAR-100 table.
- `shapes/<teacher>,<student>/{teacher,student}`: the `(H, W, C)` of each
  model's `feats[1:]` as `get_feat_shapes` sees them.
- `probe/<teacher>,<student>/{teacher,student}_moved`: whether building VID
  changed each model's BatchNorm running statistics (`get_feat_shapes` runs
  both in training mode).
- the torch version, the commit and the SHA-256 of each source.
"""

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run as a script: `golden` is a folder of tests/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from golden.make_cifar_zoo import SOURCES, _build, _load_sources  # noqa: E402
from golden.make_feature_losses import FixedFeatures, load  # noqa: E402

COMMIT = "a08d46f"
OUTPUT = Path(__file__).with_name("vid.npz")
FILES = (
    "mdistiller__base.py",
    "mdistiller__common.py",
    "mdistiller_VID.py",
    "mdistiller_engine_cfg.py",
    *SOURCES,
)
BATCH = 4
# (height = width, channels) of feats[0..3]; feats[0] is not read.
TEACHER_SHAPES = ((8, 4), (8, 8), (6, 16), (4, 32))
STUDENT_SHAPES = ((8, 4), (16, 4), (6, 8), (2, 16))
PAIRS = (
    ("resnet56", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("vgg13", "vgg8"),
    ("resnet32x4", "shufflenetv1"),
    ("resnet32x4", "shufflenetv2"),
    ("wrn_40_2", "shufflenetv1"),
    ("vgg13", "mobilenetv2"),
    ("resnet50", "mobilenetv2"),
)


def features(rng, shapes):
    return [
        np.maximum(rng.normal(size=(BATCH, h, h, c)), 0).astype(np.float32)
        for h, c in shapes
    ]


def run_case(module, cfg, teacher, student, log_scales=None):
    """VID's `loss_kd`, its gradients and the ported weights."""
    torch.manual_seed(0)
    pooled = np.zeros((BATCH, 1), np.float32)
    distiller = module.VID(
        FixedFeatures(student, pooled), FixedFeatures(teacher, pooled), cfg
    )
    if log_scales is not None:
        with torch.no_grad():
            for ours, value in zip(distiller.log_scales, log_scales, strict=True):
                ours.copy_(torch.tensor(value))
    _, losses = distiller.forward_train(
        torch.zeros(BATCH, 3, 2, 2), torch.zeros(BATCH).long()
    )
    loss = losses["loss_kd"]
    loss.backward()
    out = {"loss_kd": np.float64(loss.item())}
    for i, regressor in enumerate(distiller.regressors):
        convs = [m for m in regressor if isinstance(m, torch.nn.Conv2d)]
        for j, conv in enumerate(convs):
            kernel = conv.weight.detach().numpy().transpose(2, 3, 1, 0)
            out[f"regressor{i + 1}/conv{j}"] = kernel
        log_scale = distiller.log_scales[i]
        out[f"log_scale{i + 1}"] = log_scale.detach().numpy()
        out[f"grad_log_scale{i + 1}"] = log_scale.grad.numpy()
    for i, feats in enumerate(distiller.student.feats[1:], start=1):
        out[f"grad_feats{i}"] = feats.grad.numpy().transpose(0, 2, 3, 1)
    return out


def batch_norm_buffers(model):
    return {
        key: value.clone()
        for key, value in model.state_dict().items()
        if "running_" in key
    }


def pair_facts(module, cfg, models, teacher_name, student_name):
    """`get_extra_parameters()`, whether building VID moved BN statistics
    and the `feats[1:]` shapes VID was built for."""
    teacher, student = _build(models, teacher_name), _build(models, student_name)
    student_shapes, teacher_shapes = module.get_feat_shapes(
        student, teacher, cfg.VID.INPUT_SIZE
    )
    before = [batch_norm_buffers(m) for m in (teacher, student)]
    distiller = module.VID(student, teacher, cfg)
    moved = [
        any(not torch.equal(old[k], v) for k, v in batch_norm_buffers(m).items())
        for old, m in zip(before, (teacher, student), strict=True)
    ]
    # feats[1:] as NHWC shapes, the batch left out.
    nhwc = [
        [(s[2], s[3], s[1]) for s in side[1:]]
        for side in (teacher_shapes, student_shapes)
    ]
    return distiller.get_extra_parameters(), moved, nhwc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    source = parser.parse_args().source
    load(source, "mdistiller__base.py", "_base")
    load(source, "mdistiller__common.py", "_common")
    cfg = load(source, "mdistiller_engine_cfg.py", "cfg").CFG
    module = load(source, "mdistiller_VID.py", "VID")
    rng = np.random.default_rng(20241204)
    teacher, student = features(rng, TEACHER_SHAPES), features(rng, STUDENT_SHAPES)
    out = {}
    for i in (1, 2, 3):
        out[f"teacher_feats{i}"], out[f"student_feats{i}"] = teacher[i], student[i]
    scales = [rng.normal(size=c).astype(np.float32) for _, c in TEACHER_SHAPES[1:]]
    cases = {
        "init": run_case(module, cfg, teacher, student),
        "random_scales": run_case(module, cfg, teacher, student, scales),
    }
    for case, values in cases.items():
        for key, value in values.items():
            out[f"{case}/{key}"] = value
        print(case, values["loss_kd"])
    out["weights"] = np.array([cfg.VID.LOSS.CE_WEIGHT, cfg.VID.LOSS.FEAT_WEIGHT])
    out["init_pred_var"], out["eps"] = (
        np.float64(cfg.VID.INIT_PRED_VAR),
        np.float64(cfg.VID.EPS),
    )
    models = _load_sources(Path(source))
    for teacher_name, student_name in PAIRS:
        pair = f"{teacher_name},{student_name}"
        count, moved, shapes = pair_facts(
            module, cfg, models, teacher_name, student_name
        )
        out[f"shapes/{pair}/teacher"], out[f"shapes/{pair}/student"] = shapes
        out[f"extra_parameters/{pair}"] = np.int64(count)
        out[f"probe/{pair}/teacher_moved"], out[f"probe/{pair}/student_moved"] = moved
        print(pair, count, moved)
    out["torch_version"] = np.array(torch.__version__)
    out["commit"] = np.array(COMMIT)
    for filename in FILES:
        digest = hashlib.sha256((Path(source) / filename).read_bytes()).hexdigest()
        out[f"sha256/{filename}"] = np.array(digest)
    np.savez_compressed(OUTPUT, **out)


if __name__ == "__main__":
    main()

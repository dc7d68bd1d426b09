"""Makes the golden fixture of mdistiller's OFD.

    pip install torch==2.13.0 scipy   # CPU build; only for this script, never for CI
    python tests/golden/make_ofd.py --source=../shared/reference/peer

`--source` holds verbatim copies of megvii-research/mdistiller @ a08d46f's
`distillers/OFD.py` and `_base.py` (`mdistiller_OFD.py`, `mdistiller__base.py`)
and `engine/cfg.py` (`mdistiller_engine_cfg.py`; yacs's `CfgNode` is stubbed by
an attribute dict). Their code is imported from there, never copied; only the
numbers are committed, in `ofd.npz` next to this script. For each case
(`k1`: cfg.py's `OFD.CONNECTOR.KERNEL_SIZE` 1; `k3`: kernel size 3):

- `<case>/teacher_preact<i>`, `<case>/student_preact<i>` (i = 0..3: stem and
  three stages): fixed float32 pre-ReLU features, NHWC (NCHW for the
  reference), standard normal plus a shift; the teacher's stage 1 at twice the
  student's size (the reference average-pools it).
- `<case>/bn_gamma<i>`, `<case>/bn_beta<i>` (i = 0..2): the stub teacher's
  `get_bn_before_relu()` weights and biases (some channels in the margin's
  `-3 s` branch, some gammas negative); `<case>/margin<i>`: the reference's
  margins from them.
- `<case>/connector<i>_kernel` (HWIO) : the connectors' conv weights as the
  reference initialises them (torch seed 0); their BatchNorm starts at 1, 0.
- `<case>/loss_kd`: `forward_train`'s `loss_kd` (cfg.py's FEAT_WEIGHT 0.001,
  the distiller in training mode: batch statistics in the connectors);
  `<case>/grad_preact<i>`: its gradient w.r.t. the student features (NHWC);
  `<case>/running_mean<i>`, `<case>/running_var<i>`: the connectors'
  BatchNorm buffers after that one step; `<case>/extra_parameters`:
  `get_extra_parameters()`.
- `weight`: cfg.py's `OFD.LOSS.FEAT_WEIGHT`; the torch version, the commit and
  the SHA-256 of each source.
"""

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from make_feature_losses import load  # noqa: E402  (the stubbed imports)

COMMIT = "a08d46f"
FILES = ("mdistiller__base.py", "mdistiller_engine_cfg.py", "mdistiller_OFD.py")
OUTPUT = Path(__file__).with_name("ofd.npz")
BATCH = 4
# (height = width, channels) of preact_feats[0..3].
TEACHER_SHAPES = ((8, 4), (8, 8), (4, 16), (2, 24))
STUDENT_SHAPES = ((4, 4), (4, 4), (4, 8), (2, 12))


def nchw(array):
    return torch.tensor(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


class FixedPreact(torch.nn.Module):
    """A stub model: fixed logits, `preact_feats` (NCHW) and, for the
    teacher, fixed BatchNorm layers before each stage's last ReLU."""

    def __init__(self, preact, batch_norms=None):
        super().__init__()
        self.preact = [nchw(f).requires_grad_(True) for f in preact]
        self.batch_norms = batch_norms

    def get_stage_channels(self):
        return [f.shape[1] for f in self.preact]

    def get_bn_before_relu(self):
        return self.batch_norms

    def forward(self, image):
        return torch.zeros(image.shape[0], 10), {"preact_feats": self.preact}


def fixed_batch_norms(rng, channels):
    """BatchNorm layers with signed gammas and betas, some beyond 3.1 |gamma|."""
    layers, arrays = [], []
    for count in channels:
        gamma = rng.uniform(0.2, 2.0, count) * rng.choice([-1.0, 1.0], count)
        beta = rng.normal(0.0, 1.5, count)
        beta[:2] = 4.0 * np.abs(gamma[:2])  # Phi(-beta / s) < 0.001: -3 s
        layer = torch.nn.BatchNorm2d(count)
        layer.weight.data = torch.tensor(gamma, dtype=torch.float32)
        layer.bias.data = torch.tensor(beta, dtype=torch.float32)
        layers.append(layer)
        arrays.append((gamma.astype(np.float32), beta.astype(np.float32)))
    return layers, arrays


def run_case(module, cfg, kernel_size, rng):
    teacher = [
        (rng.normal(size=(BATCH, h, h, c)) - 0.3).astype(np.float32)
        for h, c in TEACHER_SHAPES
    ]
    student = [
        (rng.normal(size=(BATCH, h, h, c)) - 0.3).astype(np.float32)
        for h, c in STUDENT_SHAPES
    ]
    batch_norms, bn_arrays = fixed_batch_norms(rng, [c for _, c in TEACHER_SHAPES[1:]])
    cfg.OFD.CONNECTOR.KERNEL_SIZE = kernel_size
    torch.manual_seed(0)
    distiller = module.OFD(FixedPreact(student), FixedPreact(teacher, batch_norms), cfg)
    distiller.train()
    _, losses = distiller.forward_train(
        torch.zeros(BATCH, 3, 2, 2), torch.zeros(BATCH).long()
    )
    losses["loss_kd"].backward()
    out = {"loss_kd": np.float64(losses["loss_kd"].item())}
    out["extra_parameters"] = np.int64(distiller.get_extra_parameters())
    for i in range(4):
        out[f"teacher_preact{i}"], out[f"student_preact{i}"] = teacher[i], student[i]
        grad = distiller.student.preact[i].grad
        if grad is not None:
            out[f"grad_preact{i}"] = grad.numpy().transpose(0, 2, 3, 1)
    for i, (connector, margin) in enumerate(
        zip(distiller.connectors.connectors, distiller.margins, strict=True)
    ):
        conv, batch_norm = connector
        out[f"connector{i}_kernel"] = conv.weight.detach().numpy().transpose(2, 3, 1, 0)
        out[f"running_mean{i}"] = batch_norm.running_mean.numpy()
        out[f"running_var{i}"] = batch_norm.running_var.numpy()
        out[f"margin{i}"] = margin.numpy().ravel()
        out[f"bn_gamma{i}"], out[f"bn_beta{i}"] = bn_arrays[i]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    source = parser.parse_args().source
    load(source, "mdistiller__base.py", "_base")
    cfg = load(source, "mdistiller_engine_cfg.py", "cfg").CFG
    module = load(source, "mdistiller_OFD.py", "OFD")
    rng = np.random.default_rng(20241203)
    out = {}
    for case, kernel_size in (("k1", 1), ("k3", 3)):
        for key, value in run_case(module, cfg, kernel_size, rng).items():
            out[f"{case}/{key}"] = value
        print(case, out[f"{case}/loss_kd"], out[f"{case}/extra_parameters"])
    out["weight"] = np.float64(cfg.OFD.LOSS.FEAT_WEIGHT)
    out["torch_version"] = np.array(torch.__version__)
    out["commit"] = np.array(COMMIT)
    for filename in FILES:
        digest = hashlib.sha256((Path(source) / filename).read_bytes()).hexdigest()
        out[f"sha256/{filename}"] = np.array(digest)
    np.savez_compressed(OUTPUT, **out)


if __name__ == "__main__":
    main()

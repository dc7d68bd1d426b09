"""Distillation losses and the CSWT temperature, as specified in docs/methods.md.

Each loss module registers its class with `@register("name")`, so importing
it is what makes `get("name")` find it; the imports below register the
package's own. docs/extending.md adds one from outside the package.
"""

from keras_cskd.checks import refuse_renamed
from keras_cskd.losses.attention_transfer import AttentionTransfer
from keras_cskd.losses.crd import CRD
from keras_cskd.losses.cskd import CSKD
from keras_cskd.losses.cswt import CSWT
from keras_cskd.losses.ctkd import CTKD
from keras_cskd.losses.dist import DIST
from keras_cskd.losses.distillation_loss import DistillationLoss
from keras_cskd.losses.dkd import DKD
from keras_cskd.losses.feature_distillation import FeatureDistillation
from keras_cskd.losses.fitnet import FitNet
from keras_cskd.losses.kd import KD
from keras_cskd.losses.kdsvd import KDSVD
from keras_cskd.losses.logit_loss import LogitLoss
from keras_cskd.losses.lskd import LSKD
from keras_cskd.losses.mlkd import MLKD
from keras_cskd.losses.nst import NST
from keras_cskd.losses.ofd import OFD
from keras_cskd.losses.pkt import PKT
from keras_cskd.losses.registry import get, get_class, names, register
from keras_cskd.losses.reviewkd import ReviewKD
from keras_cskd.losses.rkd import RKD
from keras_cskd.losses.skd import SKD
from keras_cskd.losses.sp import SP
from keras_cskd.losses.two_view_cskd import TwoViewCSKD
from keras_cskd.losses.vid import VID

# Old spellings, refused with the new one (nothing saved refers to them).
__getattr__ = refuse_renamed(
    __name__, {"LogitsDistillationLoss": "keras_cskd.losses.LogitLoss"}
)


__all__ = [
    "AttentionTransfer",
    "CRD",
    "CSKD",
    "CSWT",
    "CTKD",
    "DIST",
    "DKD",
    "DistillationLoss",
    "FeatureDistillation",
    "FitNet",
    "KD",
    "KDSVD",
    "LSKD",
    "LogitLoss",
    "MLKD",
    "NST",
    "OFD",
    "PKT",
    "RKD",
    "ReviewKD",
    "SKD",
    "SP",
    "TwoViewCSKD",
    "VID",
    "get",
    "get_class",
    "names",
    "register",
]

"""Distil a CIFAR-100 student: the reference recipes of KD, DKD, CSKD and LS-KD.

    python train.py \
        --config=configs/cifar100_distill.py:cskd_reference,resnet32x4,resnet8x4

The argument is `method,teacher,student`, for one of the eleven pairs of the
CSKD paper's CIFAR-100 table (PAIRS) and one of:

- `kd`: mdistiller's KD (CE 0.1, KD 0.9, T 4), 240 epochs.
- `dkd`: mdistiller's DKD (CE 1, alpha 1, beta per pair, T 4, 20 warm-up
  epochs), 240 epochs.
- `cskd`: CSKD+CSWT as the paper describes it: CE plus L_cs(T=4) + L_cswt(2..6),
  weight 1 each, on one view, 240 epochs.
- `cskd_reference`: exactly what the paper's code (llieeai/lud) trains: a weak
  and a strong view of every batch, CE on both, `TwoViewCSKD` with its
  median-confidence masks and class- and batch-Gram terms, 480 epochs.
- `kd_ls`: KD with LS-KD's logit standardisation (`KD(standardize=True)`), as
  its code's `--logit-stand`: CE 0.1, the pair's base temperature and KD
  weight (`LS_KD_PAIRS`; 2 and 9 for most), 240 epochs.
- `dkd_ls`: DKD with logit standardisation: CE 1, the pair's temperature, alpha
  = 1 x weight and beta = the pair's beta x weight (`LS_DKD_PAIRS`), 20
  warm-up epochs, 240 epochs.
- `mlkd`: MLKD (Jin et al., CVPR 2023) as its code trains: a weak and a strong
  view (the CSKD code's strong view, the same transform), CE 0.1 on each, `MLKD`
  at T 4 with weight 0.9; the pair's epochs and rate in MLKD's configs
  (`MLKD_PAIRS`: 240 and 0.025 for most), decay at epochs 150, 180, 210.
- `mlkd_ls`: `mlkd` with LS-KD's logit standardisation of its KD terms
  (`MLKD(standardize=True)`), the pair's base temperature and weight
  (`LS_MLKD_PAIRS`; 2 and 9 for most), the epochs and rate of LS-KD's MLKD
  configs (`LS_MLKD_SCHEDULES`: 480 and 0.025 for most).
- `ctkd`: CTKD's global learnable temperature (`losses.CTKD`: T in (1, 21),
  its gradient reversed with the cosine curriculum 0 -> -1 over epochs 1-10)
  as its `scripts/run_cifar_distill.sh`: CE 0.1, KD 0.9, 240 epochs, rate 0.05.
- `fitnet`, `at`, `nst`, `pkt`, `kdsvd`, `rkd`, `sp`, `vid`, `ofd`, `crd`,
  `reviewkd` (`FEATURE_RECIPES`): mdistiller's feature methods on its taps
  (`feats[2]`, `feats[1:]`, `preact_feats[1:]`, `pooled_feat`, ...), each
  with cfg.py's options, CE weight and feature weight, and `kd`'s solver;
  CRD's batches carry each example's index (`data.sample_indices`), and OFD
  has no MobileNetV2 students (`pairs("ofd")`).
- `kd_dot`: `kd` trained by mdistiller's DOT (momentum 0.9 -+ 0.075 for the
  task and the distillation gradients, `optimizers.DOT`), for the three pairs
  of its `configs/cifar100/dot/` (`DOT_PAIRS`).

Every recipe trains with PyTorch's SGD (momentum 0.9, weight decay 5e-4 added
to the gradient of every parameter), batch 64, the rate x0.1 at the start of
epochs 151, 181 and 211; base rate 0.05 (KD, DKD) or 0.025 (CSKD), 0.01 for
ShuffleNet and MobileNetV2 students (LS-KD's configs use the same rates and
schedule); black-padded random crop and flip. The
teacher is read from saved_models/cifar100_<teacher>.keras and, if missing,
trained first with configs/cifar100_teacher.py. docs/reproducing.md gives each
value's source.
"""

from keras_cskd.config import default_config, loss_config

# (teacher, student): DKD's beta for the pair (mdistiller's configs).
PAIRS = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("resnet32x4", "resnet8x4"): 8.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("resnet32x4", "shufflenetv1"): 8.0,
    ("resnet32x4", "shufflenetv2"): 8.0,
    ("wrn_40_2", "shufflenetv1"): 8.0,
    ("vgg13", "mobilenetv2"): 6.0,
    ("resnet50", "mobilenetv2"): 8.0,
}
# LS-KD (sunshangquan/logit-standardization-KD @ f6e5aa5), per pair: KD+LS's
# (base temperature, KD weight) and DKD+LS's (temperature, weight, beta before
# the weight multiplies it): the values in the names of the logs its README's
# CIFAR-100 table links (`KD_TYPE,TEACHER,STUDENT,T,WEIGHT[,BETA]`); a pair
# with no log there gets the README command's `--base-temp 2 --kd-weight 9`
# and its config's beta (docs/reproducing.md).
LS_KD_PAIRS = {
    ("resnet56", "resnet20"): (2.0, 9.0),
    ("resnet110", "resnet32"): (2.0, 9.0),
    ("resnet32x4", "resnet8x4"): (2.0, 9.0),
    ("wrn_40_2", "wrn_16_2"): (2.0, 9.0),
    ("wrn_40_2", "wrn_40_1"): (2.0, 9.0),
    ("vgg13", "vgg8"): (3.0, 9.0),
    ("resnet32x4", "shufflenetv1"): (2.0, 9.0),  # no log
    ("resnet32x4", "shufflenetv2"): (2.0, 9.0),
    ("wrn_40_2", "shufflenetv1"): (2.0, 9.0),  # no log
    ("vgg13", "mobilenetv2"): (3.0, 9.0),
    ("resnet50", "mobilenetv2"): (3.0, 1.0),
}
LS_DKD_PAIRS = {
    ("resnet56", "resnet20"): (3.0, 18.0, 2.0),
    ("resnet110", "resnet32"): (2.0, 15.0, 2.0),
    ("resnet32x4", "resnet8x4"): (2.0, 9.0, 8.0),
    ("wrn_40_2", "wrn_16_2"): (2.0, 12.0, 2.0),
    ("wrn_40_2", "wrn_40_1"): (2.0, 12.0, 2.0),
    ("vgg13", "vgg8"): (2.0, 15.0, 2.0),
    ("resnet32x4", "shufflenetv1"): (2.0, 9.0, 8.0),  # no log
    ("resnet32x4", "shufflenetv2"): (2.0, 9.0, 8.0),
    ("wrn_40_2", "shufflenetv1"): (2.0, 9.0, 8.0),  # no log
    ("vgg13", "mobilenetv2"): (3.0, 9.0, 2.0),
    ("resnet50", "mobilenetv2"): (2.0, 15.0, 2.0),
}
# MLKD, per pair: (epochs, base rate) of MLKD's own configs
# (Jin-Ying/Multi-Level-Logit-Distillation @ 5ee473f, configs/cifar100/ours/).
MLKD_PAIRS = {
    ("resnet56", "resnet20"): (240, 0.025),
    ("resnet110", "resnet32"): (240, 0.025),
    ("resnet32x4", "resnet8x4"): (240, 0.025),
    ("wrn_40_2", "wrn_16_2"): (240, 0.025),
    ("wrn_40_2", "wrn_40_1"): (240, 0.025),
    ("vgg13", "vgg8"): (240, 0.025),
    ("resnet32x4", "shufflenetv1"): (960, 0.01),
    ("resnet32x4", "shufflenetv2"): (960, 0.01),
    ("wrn_40_2", "shufflenetv1"): (480, 0.01),
    ("vgg13", "mobilenetv2"): (480, 0.01),
    ("resnet50", "mobilenetv2"): (480, 0.01),
}
# MLKD+LS, per pair: (epochs, base rate) of LS-KD's configs/cifar100/mlkd/*.yaml
LS_MLKD_SCHEDULES = {
    ("resnet56", "resnet20"): (480, 0.025),
    ("resnet110", "resnet32"): (480, 0.025),
    ("resnet32x4", "resnet8x4"): (480, 0.025),
    ("wrn_40_2", "wrn_16_2"): (480, 0.025),
    ("wrn_40_2", "wrn_40_1"): (480, 0.025),
    ("vgg13", "vgg8"): (480, 0.01),
    ("resnet32x4", "shufflenetv1"): (960, 0.01),
    ("resnet32x4", "shufflenetv2"): (960, 0.01),
    ("wrn_40_2", "shufflenetv1"): (480, 0.01),
    ("vgg13", "mobilenetv2"): (480, 0.01),
    ("resnet50", "mobilenetv2"): (480, 0.01),
}
# and its (base temperature, KD weight) from the names of the logs its
# README's CIFAR-100 tables link (`mlkd,TEACHER,STUDENT,T,WEIGHT`); a pair with
# no log gets the README command's `--base-temp 2 --kd-weight 9`.
LS_MLKD_PAIRS = {
    ("resnet56", "resnet20"): (2.0, 9.0),  # no log
    ("resnet110", "resnet32"): (2.0, 9.0),
    ("resnet32x4", "resnet8x4"): (2.0, 9.0),
    ("wrn_40_2", "wrn_16_2"): (2.0, 9.0),
    ("wrn_40_2", "wrn_40_1"): (2.0, 9.0),
    ("vgg13", "vgg8"): (2.0, 6.0),
    ("resnet32x4", "shufflenetv1"): (2.0, 9.0),  # no log
    ("resnet32x4", "shufflenetv2"): (2.0, 6.0),
    ("wrn_40_2", "shufflenetv1"): (2.0, 9.0),  # no log
    ("vgg13", "mobilenetv2"): (2.0, 6.0),
    ("resnet50", "mobilenetv2"): (2.0, 9.0),
}
# mdistiller's configs/cifar100/dot/*.yaml (a08d46f): the pairs DOT was run on.
DOT_PAIRS = (
    ("resnet32x4", "resnet8x4"),
    ("resnet32x4", "shufflenetv2"),
    ("vgg13", "vgg8"),
)
# mdistiller's feature methods (a08d46f): per method, the loss block (the
# taps it reads and cfg.py's options) and the weights of the cross-entropy and
# of the loss (cfg.py's <METHOD>.LOSS.CE_WEIGHT and FEAT_WEIGHT). Their solver
# is `kd`'s (configs/cifar100/<method>.yaml). docs/reproducing.md, "Feature
# methods", gives each value's source.
FEATURE_RECIPES = {
    # FITNET.HINT_LAYER 2; the probe: get_feat_shapes at FitNet's construction.
    "fitnet": {
        "loss": loss_config(
            "fitnet",
            teacher_layer_name="feats[2]",
            student_layer_name="feats[2]",
            probe_batch_norm=True,
        ),
        "ce_weight": 1.0,
        "distillation_loss_weight": 100.0,
    },
    # AT.P 2, at_loss over feats[1:] of both networks.
    "at": {
        "loss": loss_config(
            "attention_transfer",
            teacher_layer_name="feats[1:]",
            student_layer_name="feats[1:]",
            p=2.0,
        ),
        "ce_weight": 1.0,
        "distillation_loss_weight": 1000.0,
    },
    # OFD: cfg.py's OFD.* (CE 1, FEAT_WEIGHT 0.001, CONNECTOR.KERNEL_SIZE 1) on
    # preact_feats[1:], the teacher in training mode as the reference's `train()`
    # leaves it (teacher_batch_statistics=False: the clean variant); the
    # Distiller takes the margins from the teacher. Not for MobileNetV2
    # students, which have no preact_feats (nor in mdistiller).
    "ofd": {
        "loss": loss_config(
            "ofd",
            kernel_size=1,
            teacher_layer_name="preact_feats[1:]",
            student_layer_name="preact_feats[1:]",
            teacher_batch_statistics=True,
        ),
        "ce_weight": 1.0,
        "distillation_loss_weight": 0.001,
        "pairs": tuple(pair for pair in PAIRS if pair[1] != "mobilenetv2"),
    },
    # CRD: cfg.py's CRD.* (feature dim 128, NCE K 16384, momentum 0.5, T 0.07,
    # mode exact; CE 1, feat 0.8) on the pooled features; the training split's
    # size and labels come from the data (`data.sample_indices`, `_use_crd`).
    "crd": {
        "loss": loss_config(
            "crd",
            teacher_layer_name="pooled_feat",
            student_layer_name="pooled_feat",
            feature_dim=128,
            num_negatives=16384,
            temperature=0.07,
            momentum=0.5,
            mode="exact",
            normalizer="first_batch",
        ),
        "ce_weight": 1.0,
        "distillation_loss_weight": 0.8,
    },
    # ReviewKD: cfg.py's REVIEWKD (CE 1, warm-up 20, taps feats[1:] + pooled_feat
    # of the student, preact_feats[1:] + pooled_feat of the teacher; IN/OUT_CHANNELS,
    # SHAPES, OUT_SHAPES derived from the pair's shapes) and reviewkd.yaml's
    # REVIEWKD_WEIGHT 5.
    "reviewkd": {
        "loss": loss_config(
            "reviewkd",
            teacher_layer_name=("preact_feats[1:]", "pooled_feat"),
            student_layer_name=("feats[1:]", "pooled_feat"),
            warmup_epochs=20,
            max_mid_channels=512,
        ),
        "ce_weight": 1.0,
        "distillation_loss_weight": 5.0,
    },
    # VID: stages feats[1:], variances from 5 (never trained, as mdistiller);
    # the probe: get_feat_shapes at VID's construction.
    "vid": {
        "loss": loss_config(
            "vid",
            teacher_layer_name="feats[1:]",
            student_layer_name="feats[1:]",
            init_pred_var=5.0,
            eps=1e-5,
            train_variances=False,
            probe_batch_norm=True,
        ),
        "ce_weight": 1.0,
        "distillation_loss_weight": 1.0,
    },
    "nst": {
        "loss": loss_config(
            "nst", teacher_layer_name="feats[1:]", student_layer_name="feats[1:]"
        ),
        "ce_weight": 1.0,
        "distillation_loss_weight": 50.0,
    },
    "pkt": {
        "loss": loss_config(
            "pkt",
            teacher_layer_name="pooled_feat",
            student_layer_name="pooled_feat",
            epsilon=1e-7,
        ),
        "ce_weight": 1.0,
        "distillation_loss_weight": 30000.0,
    },
    "kdsvd": {
        "loss": loss_config(
            "kdsvd",
            teacher_layer_name="feats[1:]",
            student_layer_name="feats[1:]",
            k=1,
            signs="library",  # torch.svd's signs as the SVD returns them
        ),
        "ce_weight": 1.0,
        "distillation_loss_weight": 1.0,
    },
    "rkd": {
        "loss": loss_config(
            "rkd",
            teacher_layer_name="pooled_feat",
            student_layer_name="pooled_feat",
            distance_weight=25.0,
            angle_weight=50.0,
            epsilon=1e-12,
            squared=False,
        ),
        "ce_weight": 1.0,
        "distillation_loss_weight": 1.0,
    },
    "sp": {
        "loss": loss_config(
            "sp", teacher_layer_name="feats[-1]", student_layer_name="feats[-1]"
        ),
        "ce_weight": 1.0,
        "distillation_loss_weight": 3000.0,
    },
}
SMALL_LEARNING_RATE_STUDENTS = ("shufflenetv1", "shufflenetv2", "mobilenetv2")
METHODS = ("kd", "dkd", "cskd", "cskd_reference", "kd_ls", "dkd_ls", "ctkd", "kd_dot")
MLKD_METHODS = ("mlkd", "mlkd_ls")
FEATURE_METHODS = tuple(FEATURE_RECIPES)


def pairs(method):
    """The (teacher, student) pairs `method` has a recipe for."""
    if method in FEATURE_RECIPES:
        return FEATURE_RECIPES[method].get("pairs", tuple(PAIRS))
    return DOT_PAIRS if method == "kd_dot" else tuple(PAIRS)


def get_config(spec="cskd_reference,resnet32x4,resnet8x4"):
    method, teacher, student = (part.strip() for part in spec.split(","))
    if (teacher, student) not in PAIRS:
        known = ", ".join(f"{t},{s}" for t, s in PAIRS)
        raise ValueError(f"Unknown pair {teacher},{student}; known pairs: {known}.")
    known = METHODS + MLKD_METHODS + FEATURE_METHODS
    if method not in known:
        raise ValueError(
            f"Unknown method '{method}' for CIFAR-100: {', '.join(known)}."
        )
    if method == "kd_dot":
        return _kd_dot(teacher, student)
    config = default_config()
    config.model = student
    config.teacher.path = f"saved_models/cifar100_{teacher}.keras"
    config.teacher.config = f"configs/cifar100_teacher.py:{teacher}"
    config.data.name = "tfds:cifar100"
    config.data.augmentation = "cifar_crop_flip"
    config.data.batch_size = 64
    config.batch_norm_group = 64  # the reference's one GPU: BatchNorm over 64
    config.data.eval_batch_size = 500
    config.epochs = 240
    if method == "kd":
        config.loss = loss_config("kd", temperature=4.0)
        config.ce_weight, config.distillation_loss_weight = 0.1, 0.9
    elif method == "dkd":
        beta = PAIRS[teacher, student]
        config.loss = loss_config(
            "dkd", temperature=4.0, alpha=1.0, beta=beta, warmup_epochs=20
        )
    elif method == "kd_ls":
        temperature, weight = LS_KD_PAIRS[teacher, student]
        config.loss = loss_config("kd", temperature=temperature, standardize=True)
        config.ce_weight, config.distillation_loss_weight = 0.1, weight
    elif method == "dkd_ls":
        temperature, weight, beta = LS_DKD_PAIRS[teacher, student]
        config.loss = loss_config(
            "dkd",
            temperature=temperature,
            alpha=weight,
            beta=beta * weight,
            warmup_epochs=20,
            standardize=True,
        )
    elif method == "ctkd":
        _use_ctkd(config)
    elif method in FEATURE_METHODS:
        recipe = FEATURE_RECIPES[method]
        if (teacher, student) not in pairs(method):
            raise ValueError(
                f"{method} has no recipe for {teacher},{student}; it has one for "
                f"{', '.join(f'{t},{s}' for t, s in pairs(method))}."
            )
        config.loss = recipe["loss"].copy_and_resolve_references()
        config.ce_weight = recipe["ce_weight"]
        config.distillation_loss_weight = recipe["distillation_loss_weight"]
        if method == "crd":
            _use_crd(config)
    elif method == "cskd":
        config.loss = loss_config("cskd", temperature=4.0, cswt=True, alpha=2.0)
    elif method == "cskd_reference":
        config.loss = loss_config(
            "two_view_cskd", temperature=4.0, cswt=True, alpha=2.0
        )
        config.data.two_views = True
        config.view_weights = (1.0, 1.0)  # CE on both views
        config.epochs = 480
    base_rate = 0.025 if method.startswith("cskd") else 0.05
    config.optimizer.update(
        name="torch_sgd",
        learning_rate=0.01 if student in SMALL_LEARNING_RATE_STUDENTS else base_rate,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="multistep",
        milestones=(150, 180, 210),
        decay_rate=0.1,
    )
    config.export.formats = "savedmodel,tflite,tflite_int8"
    if method in MLKD_METHODS:
        _use_mlkd(config, teacher, student, standardize=method == "mlkd_ls")
    return config


def _use_mlkd(config, teacher, student, standardize):
    """MLKD (or MLKD+LS) as its code trains the pair: two views, CE 0.1 on
    each, the loss at weight 0.9 (9 or 6 with LS), the pair's epochs and rate."""
    temperature, weight = 4.0, 0.9
    if standardize:
        temperature, weight = LS_MLKD_PAIRS[teacher, student]
    # The reference's surprises, each a switch (docs/reproducing.md, "mlkd").
    config.loss = loss_config(
        "mlkd",
        temperature=temperature,
        standardize=standardize,
        confidence_masks=True,
        weak_view_at_2_and_6=True,
        strong_gram_terms=False,
    )
    config.ce_weight, config.distillation_loss_weight = 0.1, weight
    config.data.two_views = True
    config.data.strong_augmentation = "cifar_randaugment"
    config.view_weights = (1.0, 1.0)  # CE on both views, at ce_weight each
    schedules = LS_MLKD_SCHEDULES if standardize else MLKD_PAIRS
    config.epochs, config.optimizer.learning_rate = schedules[teacher, student]


def _use_crd(config):
    """CRD's batches carry each example's index (`CIFAR100InstanceSample`'s
    `index`); its negatives are drawn from the run's seed (a reference, so
    that `--config.seed` moves them too)."""
    config.data.sample_indices = True
    config.loss.seed = config.get_ref("seed")


def _use_ctkd(config):
    """CTKD (zhengli97/CTKD @ 7d52522): `scripts/run_cifar_distill.sh`'s
    `-r 0.1 -a 0.9 -b 0 --have_mlp 1 --mlp_name global --cosine_decay 1
    --decay_max 0 --decay_min -1 --decay_loops 10` with `train_student.py`'s
    `--t_start 1 --t_end 20` (its batch 64 and rate 0.05 are every recipe's
    here). docs/reproducing.md gives each value's line."""
    config.loss = loss_config(
        "ctkd",
        min_temperature=1.0,
        temperature_range=20.0,
        initial_logit=1.0,
        lambda_start=0.0,
        lambda_end=-1.0,
        lambda_epochs=10,
        reversal="reference",
    )
    config.ce_weight, config.distillation_loss_weight = 0.1, 0.9


def _kd_dot(teacher, student):
    """The `kd` recipe trained by DOT, as mdistiller's dot/*.yaml: KD's
    distiller and solver (its rates: 0.05, 0.01 for ShuffleNetV2) with
    `TRAINER: dot` and `DOT.DELTA: 0.075`."""
    if (teacher, student) not in DOT_PAIRS:
        known = ", ".join(f"{t},{s}" for t, s in DOT_PAIRS)
        raise ValueError(
            f"kd_dot has no reference recipe for {teacher},{student}; mdistiller's "
            f"DOT configs cover {known}."
        )
    config = get_config(f"kd,{teacher},{student}")
    config.optimizer.name = "dot"
    config.optimizer.dot.update(delta=0.075, as_mdistiller=True)
    return config

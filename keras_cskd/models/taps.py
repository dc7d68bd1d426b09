"""Feature taps: a zoo model's intermediate features, as mdistiller names them.

mdistiller's models return `(logits, feats)` where `feats` holds `"feats"` (the
stem's and each stage's output), `"preact_feats"` (the same before their last
ReLU) and `"pooled_feat"` (the globally pooled vector the classifier reads).
Feature losses pick their inputs from it. `features(model)` builds a
`keras.Model` with the same outputs for every zoo model, from fixed layer names;
a user's own functional model names its layers `feats_<i>`, `preact_feats_<i>`
and `pooled_feat` instead.
"""

import re

import keras

TAP_KEYS = ("feats", "preact_feats", "pooled_feat", "logits")
# A tap spec: `feats[2]`, `feats[1:]`, `preact_feats[-1]`, `pooled_feat`, ...
TAP_SPEC = re.compile(
    r"(?P<key>feats|preact_feats)\[(?P<index>-?\d+|-?\d*:-?\d*)\]"
    r"|(?P<whole>pooled_feat|logits)"
)
# The 6n+2 CIFAR ResNets (mdistiller `resnet.py`), not resnet18/50 (`resnetv2.py`).
_CIFAR_RESNET = re.compile(r"resnet(8|14|20|32|44|56|110|8x4|32x4)")


def features(model):
    """A model that returns `model`'s feature taps as mdistiller defines them.

    The outputs are a dict: `"feats"` (list of feature maps, NHWC),
    `"preact_feats"` (list, the same before their last ReLU; absent for
    `mobilenetv2`, whose reference defines none), `"pooled_feat"` (`[batch,
    channels]`) and `"logits"` (the model's output). Zoo models are recognised
    by their name (`model.name`, kept by `.keras` files and ported teachers).
    Any other functional model names its layers: `feats_0`, `feats_1`, ...
    (required), `preact_feats_0`, ... and `pooled_feat` (both optional).

    Args:
        model: a zoo model or a functional model with named tap layers.

    Returns:
        A `keras.Model` sharing `model`'s layers and weights.

    Raises:
        ValueError: if `model` is neither a zoo model nor has `feats_0`.

    Example:

    >>> import keras_cskd
    >>> model = keras_cskd.models.get("resnet8", 10, (32, 32, 3))
    >>> taps = keras_cskd.models.features(model)
    >>> [tuple(t.shape) for t in taps.output["feats"]]
    [(None, 32, 32, 16), (None, 32, 32, 16), (None, 16, 16, 32), (None, 8, 8, 64)]
    """
    return keras.Model(model.input, tap_outputs(model), name=f"{model.name}_features")


def tap_outputs(model):
    """`features(model)`'s outputs: a dict of `model`'s symbolic tensors."""
    taps = _named_taps(model)
    if taps is None:
        try:
            taps = _zoo_taps(model)
        except ValueError:  # a zoo model's name on a model of other layers
            taps = None
    if taps is None:
        raise ValueError(
            f"No feature taps for model '{model.name}': use a zoo model or name "
            "its layers feats_0, feats_1, ... (and optionally preact_feats_<i>, "
            "pooled_feat)."
        )
    taps["logits"] = model.outputs[0]
    return taps


def is_tap_spec(name):
    """Whether `name` names feature taps: `"feats[2]"`, `"feats[1:]"`,
    `"preact_feats[-1]"`, `"pooled_feat"` (see `tap`)."""
    return isinstance(name, str) and TAP_SPEC.fullmatch(name) is not None


def tap(model, spec):
    """The symbolic output(s) of `model` that a tap spec names.

    `"<key>[i]"` is one tensor of the list `features(model)` returns under
    `key` (`feats` or `preact_feats`), `"<key>[i:j]"` a list of them (Python
    slicing), and `"pooled_feat"` or `"logits"` the tensor itself. Feature
    losses name their inputs this way (mdistiller's `feats[1:]`).

    Example:

    >>> import keras_cskd
    >>> model = keras_cskd.models.get("resnet8", 10, (32, 32, 3))
    >>> [tuple(t.shape) for t in tap(model, "feats[1:]")]
    [(None, 32, 32, 16), (None, 16, 16, 32), (None, 8, 8, 64)]
    >>> tuple(tap(model, "pooled_feat").shape)
    (None, 64)
    """
    match = TAP_SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(
            f"'{spec}' is not a tap spec: write feats[i], feats[i:j], "
            "preact_feats[i], preact_feats[i:j], pooled_feat or logits."
        )
    taps = tap_outputs(model)
    key, index = match["key"] or match["whole"], match["index"]
    if key not in taps:
        raise ValueError(f"Model '{model.name}' has no '{key}' taps.")
    if index is None:
        return taps[key]
    if ":" in index:
        start, stop = (int(part) if part else None for part in index.split(":"))
        return taps[key][start:stop]
    try:
        return taps[key][int(index)]
    except IndexError:
        raise ValueError(
            f"'{spec}' is out of range: model '{model.name}' has "
            f"{len(taps[key])} {key}."
        ) from None


def _named_taps(model):
    """Taps from layers named by the user convention, or `None`."""
    names = {layer.name for layer in model.layers}
    if "feats_0" not in names:
        return None
    taps = {"feats": _numbered(model, names, "feats")}
    if "preact_feats_0" in names:
        taps["preact_feats"] = _numbered(model, names, "preact_feats")
    if "pooled_feat" in names:
        taps["pooled_feat"] = model.get_layer("pooled_feat").output
    return taps


def _numbered(model, names, prefix):
    outputs = []
    while f"{prefix}_{len(outputs)}" in names:
        outputs.append(model.get_layer(f"{prefix}_{len(outputs)}").output)
    return outputs


def _zoo_taps(model):
    """Taps of a zoo model, from its name; `None` for an unknown name."""
    name = model.name
    if name.endswith("_imagenet"):
        if name.startswith("mobilenetv1"):
            return _mobilenetv1_taps(model)
        return _resnet_taps(model)
    if _CIFAR_RESNET.fullmatch(name) or name in ("resnet18", "resnet50"):
        return _resnet_taps(model)
    builders = {
        "wrn": _wrn_taps,
        "vgg": _vgg_taps,
        "mobilenetv2": _mobilenetv2_taps,
        "shufflenetv1": _shufflenetv1_taps,
        "shufflenetv2": _shufflenetv2_taps,
        "digits_cnn": _digits_cnn_taps,
    }
    for prefix, builder in builders.items():
        if name.startswith(prefix):
            return builder(model)
    return None


def _out(model, layer_name):
    return model.get_layer(layer_name).output


def _last_blocks(model):
    """`["stage1_block<last>", ...]`: the last block of each stage, in order."""
    last = {}
    for layer in model.layers:
        match = re.match(r"stage(\d+)_block(\d+)_", layer.name)
        if match:
            stage, block = int(match[1]), int(match[2])
            last[stage] = max(last.get(stage, 0), block)
    return [f"stage{s}_block{last[s]}" for s in sorted(last)]


def _taps(model, feats, preact_feats, pooled="avgpool"):
    """The tap dict from layer names (`preact_feats=None`: no such tap)."""
    taps = {"feats": [_out(model, n) for n in feats]}
    if preact_feats is not None:
        taps["preact_feats"] = [_out(model, n) for n in preact_feats]
    taps["pooled_feat"] = _out(model, pooled)
    return taps


def _resnet_taps(model):
    # Each stage's last block: the sum before the ReLU, and after it. The
    # stem's "preact" is after its ReLU too: the reference keeps the tensor
    # that its in-place ReLU then overwrites (CIFAR and ImageNet alike).
    blocks = _last_blocks(model)
    return _taps(
        model,
        ["stem_relu", *(f"{b}_out" for b in blocks)],
        ["stem_relu", *(f"{b}_add" for b in blocks)],
    )


def _wrn_taps(model):
    # Pre-activation blocks: a stage's "preact" is the BatchNorm that the next
    # stage's first block (or the final BatchNorm) applies to its output.
    blocks = _last_blocks(model)
    next_bns = [f"stage{s}_block0_pre_bn" for s in range(2, len(blocks) + 1)]
    return _taps(
        model,
        ["stem_conv", *(f"{b}_add" for b in blocks)],
        ["stem_conv", *next_bns, "final_bn"],
    )


def _vgg_last_convs(model):
    """`["block0_<last>", ...]`: each VGG block's last conv-BN-ReLU."""
    names = {layer.name for layer in model.layers}
    last = []
    while f"block{len(last)}_0_relu" in names:
        k, i = len(last), 0
        while f"block{k}_{i + 1}_relu" in names:
            i += 1
        last.append(f"block{k}_{i}")
    return last


def _vgg_taps(model):
    # Each block ends in conv-BN; its ReLU is the block's feature.
    last = _vgg_last_convs(model)
    return _taps(
        model,
        [f"{b}_relu" for b in last],
        [f"{last[0]}_relu", *(f"{b}_bn" for b in last[1:])],
    )


def _mobilenetv2_taps(model):
    # mdistiller taps the output of the reference's blocks[1], [2], [4], [6]
    # (stages 2, 3, 5, 7 here) and defines no pre-activation features.
    names = {layer.name for layer in model.layers}
    blocks = _last_blocks(model)
    outputs = [
        f"{blocks[s - 1]}_add"
        if f"{blocks[s - 1]}_add" in names
        else f"{blocks[s - 1]}_project_bn"
        for s in (2, 3, 5, 7)
    ]
    return _taps(model, ["stem_relu", *outputs], None)


def _shufflenetv1_taps(model):
    blocks = _last_blocks(model)
    names = {layer.name for layer in model.layers}
    # A unit sums its shortcut, or concatenates it at stride 2, then ReLU.
    preacts = [f"{b}_add" if f"{b}_add" in names else f"{b}_concat" for b in blocks]
    return _taps(
        model,
        ["stem_relu", *(f"{b}_out" for b in blocks)],
        ["stem_relu", *preacts],
    )


def _shufflenetv2_taps(model):
    # The reference's pre-activation of a stage's last unit is the unshuffled
    # concat of the passed-through half and the branch before its last ReLU:
    # no layer holds it, so the tap concatenates the two here.
    blocks = _last_blocks(model)
    feats = ["stem_relu", *(f"{b}_shuffle_merge" for b in blocks)]
    taps = _taps(model, feats, None)
    taps["preact_feats"] = [taps["feats"][0]] + [
        keras.layers.Concatenate(name=f"{b}_preact")(
            [model.get_layer(f"{b}_concat").input[0], _out(model, f"{b}_3_bn")]
        )
        for b in blocks
    ]
    return taps


def _mobilenetv1_taps(model):
    # mdistiller's ImageNet MobileNetV1 taps blocks 3, 5, 11 and 13.
    blocks = [f"block{k}_pointwise" for k in (3, 5, 11, 13)]
    return _taps(model, [f"{b}_relu" for b in blocks], [f"{b}_bn" for b in blocks])


def _digits_cnn_taps(model):
    # No reference: each conv block's ReLU, and the BatchNorm before it.
    names = {layer.name for layer in model.layers}
    count = sum(1 for n in names if re.fullmatch(r"relu\d+", n))
    return _taps(
        model,
        [f"relu{i}" for i in range(count)],
        [f"bn{i}" for i in range(count)],
        pooled="gap",
    )


def bn_before_relu(model):
    """The BatchNorm layer before each stage's last ReLU, as mdistiller's
    `get_bn_before_relu()`: one per stage, the stem excluded (`feats[1:]`).

    OFD's margins come from their weights. For a residual stage it is the
    last block's last BatchNorm (before the shortcut is added, as the
    reference takes it); for WRN the next stage's first BatchNorm (or the
    final one); for VGG each block's last. A user's functional model gets the
    `preact_feats_<i>` layers (i >= 1) when they are BatchNorm layers.

    Args:
        model: a zoo model (not ShuffleNet, which the reference refuses too)
            or a functional model with BatchNorm `preact_feats_<i>` layers.

    Returns:
        A list of `keras.layers.BatchNormalization` layers.

    Raises:
        ValueError: for a model without such layers.

    Example:

    >>> import keras_cskd
    >>> model = keras_cskd.models.get("resnet8", 10, (32, 32, 3))
    >>> [layer.name for layer in bn_before_relu(model)]
    ['stage1_block0_2_bn', 'stage2_block0_2_bn', 'stage3_block0_2_bn']
    """
    names = {layer.name for layer in model.layers}
    layer_names = _bn_before_relu_names(model, names)
    if layer_names is None or not set(layer_names) <= names:
        raise ValueError(
            f"No BatchNorm before the stages' ReLUs known for model '{model.name}' "
            "(mdistiller defines them for its ResNets, WRNs, VGGs and "
            "MobileNetV2): use such a teacher or name BatchNorm layers "
            "preact_feats_1, preact_feats_2, ..."
        )
    return [model.get_layer(name) for name in layer_names]


def _bn_before_relu_names(model, names):
    if "preact_feats_1" in names:
        count = len(_numbered(model, names, "preact_feats"))
        layer_names = [f"preact_feats_{i}" for i in range(1, count)]
        return (
            layer_names
            if all(
                isinstance(model.get_layer(n), keras.layers.BatchNormalization)
                for n in layer_names
            )
            else None
        )
    name = model.name
    if _CIFAR_RESNET.fullmatch(name) or name in ("resnet18", "resnet50"):
        blocks = _last_blocks(model)
        last_bn = "3_bn" if f"{blocks[0]}_3_bn" in names else "2_bn"
        return [f"{b}_{last_bn}" for b in blocks]
    if name.startswith("wrn"):
        count = len(_last_blocks(model))
        return [f"stage{s}_block0_pre_bn" for s in range(2, count + 1)] + ["final_bn"]
    if name.startswith("vgg"):
        return [f"{b}_bn" for b in _vgg_last_convs(model)[1:]]
    if name.startswith("mobilenetv2"):
        blocks = _last_blocks(model)
        return [f"{blocks[s - 1]}_project_bn" for s in (2, 3, 5, 7)]
    if name.startswith("digits_cnn"):  # no reference: its preact taps' BatchNorm
        return [f"bn{i}" for i in range(1, len(_digits_cnn_taps(model)["feats"]))]
    return None

"""The factorial study's CPU models (analysis/recipe_factorial.py): the released SILO VGG with a
shallower conv plan, so that a single CPU core can train it to well above chance in a round.

The released model (gradscope/models/vgg_silo.py, ``vgg19_bn``) has 16 conv layers; at the
conv width a CPU can afford (x1/8: 8 to 64 channels) it learns too slowly to be measured (the
pilot: 10-27 % on CIFAR-10). Here the same blocks (conv3x3 + bias, BatchNorm, ReLU; five
max-pools; the released head: AdaptiveAvgPool(7, 7) and a two-hidden-layer classifier with
dropout and no BatchNorm) follow VGG-11's plan A (8 convs) at x1/4 width (16 to 128 channels).
What the study switches is the same as at full size: the head (global average pool + one
linear vs the released FC block), the init (Kaiming vs the released ``weight_init``), and,
through gradscope's flags, pruning, rewinding and the LR.

The released head on 32x32 inputs copies each channel of the 1x1 feature map 49 times
(AdaptiveAvgPool(7, 7)) into the first FC layer: the function sees only the sum of the 49
copies, which starts at the Kaiming scale of a 128-input layer and, since every copy gets the
same gradient, moves with 49x the learning rate. At 256 hidden units that layer's ReLUs died
within 30-90 steps at every max_lr tried (0.001-0.05) and the network stayed at chance
(docs/recipe-silo-code.md, "The factorial study"). So the CPU study's FC ingredient
("pooled-fc") is the released FC block's layers -- two hidden FC layers with dropout and no
BatchNorm, 1,024 units, 67 % of the model's weights -- on the 1x1-pooled features.

Loaded by gradscope as ``--model analysis.recipe_models:NAME`` (the repository root on
PYTHONPATH); the library never imports this file.
"""
from __future__ import annotations


from gradscope.models.vgg_silo import VGG19Silo, _kaiming, released_init

PLAN_A = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
CONV_WIDTH = 1 / 4        # 16 ... 128 channels
CLASSIFIER_WIDTH = 1 / 16  # 4096 -> 256 hidden units


def _plan_a(input_shape, num_classes, head):
    return VGG19Silo(input_shape[0], num_classes, CLASSIFIER_WIDTH, CONV_WIDTH, head, plan=PLAN_A)


POOLED_FC_WIDTH = 1 / 4  # 4096 -> 1024 hidden units: 1.19 M FC weights, 67 % of the model's weights


def _plan_a_pooled(input_shape, num_classes):
    return VGG19Silo(input_shape[0], num_classes, POOLED_FC_WIDTH, CONV_WIDTH, "pooled-fc", plan=PLAN_A)


def a_pfc(input_shape, num_classes):
    """The "FC-heavy model" ingredient at CPU scale: the released FC block's layers (two hidden
    FC layers with dropout, no BN; 1024 units) on the 1x1-pooled features, Kaiming init."""
    return _kaiming(_plan_a_pooled(input_shape, num_classes))


def a_pfc_released(input_shape, num_classes):
    """The full recipe's model at CPU scale: ``a_pfc`` with the released init (``weight_init``)."""
    m = released_init(_plan_a_pooled(input_shape, num_classes))
    m.init_kind = "released"
    return m


def a_gap(input_shape, num_classes):
    """The default recipe's model: plan A x1/4 convs, global-average-pool head, Kaiming init."""
    return _kaiming(_plan_a(input_shape, num_classes, "gap"))


def a_fc(input_shape, num_classes):
    """The "FC-heavy model" ingredient alone: the released FC block (6272 -> 256 -> 256 -> 10,
    no BN), Kaiming init as the default."""
    return _kaiming(_plan_a(input_shape, num_classes, "released"))


def a_released(input_shape, num_classes):
    """The full recipe's model: the released FC block and the released init (``weight_init``)."""
    m = released_init(_plan_a(input_shape, num_classes, "released"))
    m.init_kind = "released"
    return m

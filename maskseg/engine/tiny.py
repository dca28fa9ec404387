"""The `tiny` architecture: a MobileNetV3-Large Mask R-CNN with a narrow FPN that trains on a CPU."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

FPN_CHANNELS = 64
BOX_HEAD_WIDTH = 256
MASK_HEAD_LAYERS = (64, 64, 64, 64)
# indices into mobilenet_v3_large().features: the last block at strides 4, 8, 16 and 32
RETURN_LAYERS = {"3": "0", "6": "1", "12": "2", "16": "3"}
IN_CHANNELS = [24, 40, 112, 960]
BN_MOMENTUM = 0.1  # torchvision's 0.01 leaves running stats far off after a short training run


def build_tiny_maskrcnn(
    num_classes: int,
    min_size: int = 256,
    max_size: int = 512,
    **kwargs: Any,
) -> MaskRCNN:
    """An untrained tiny Mask R-CNN (about 4 M parameters) for `num_classes` including background."""
    trunk = mobilenet_v3_large(weights=None).features
    for module in trunk.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = BN_MOMENTUM
    backbone = BackboneWithFPN(
        trunk,
        return_layers=RETURN_LAYERS,
        in_channels_list=IN_CHANNELS,
        out_channels=FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
    )
    feature_names = ["0", "1", "2", "3"]
    # one anchor size per pyramid level (strides 4..64), matched to shapes 16..256 px wide
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    box_roi_pool = MultiScaleRoIAlign(featmap_names=feature_names, output_size=7, sampling_ratio=2)
    mask_roi_pool = MultiScaleRoIAlign(featmap_names=feature_names, output_size=14, sampling_ratio=2)
    box_head = TwoMLPHead(FPN_CHANNELS * 7 * 7, BOX_HEAD_WIDTH)
    mask_head = MaskRCNNHeads(FPN_CHANNELS, list(MASK_HEAD_LAYERS), dilation=1)
    defaults: dict[str, Any] = {
        # fewer proposals than the ResNet-50 defaults: 256 px images hold a handful of objects
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500,
        "rpn_post_nms_top_n_test": 200,
        "box_batch_size_per_image": 128,
        "box_detections_per_img": 50,
    }
    defaults.update(kwargs)
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=box_roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(BOX_HEAD_WIDTH, num_classes),
        mask_roi_pool=mask_roi_pool,
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(MASK_HEAD_LAYERS[-1], FPN_CHANNELS, num_classes),
        **defaults,
    )

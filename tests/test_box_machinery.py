"""SSD box machinery (heads.detection): default boxes, box coder, matcher, loss and post-processing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import anchor_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms

from heads import BoxCoder, DefaultBoxGenerator, SSDLoss, match_anchors, postprocess_detections

MAPS_300 = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
MAPS_320 = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


# ---------------------------------------------------------------------------------------------
# DefaultBoxGenerator


@pytest.mark.parametrize(
    "maps, size, total, per_map",
    [(MAPS_300, 300, 1917, [1083, 600, 150, 54, 24, 6]), (MAPS_320, 320, 2034, [1200, 600, 150, 54, 24, 6])],
)
def test_tf_layout_counts(maps, size, total, per_map):
    gen = DefaultBoxGenerator()
    assert gen.num_anchors_per_location() == [3, 6, 6, 6, 6, 6]
    assert gen.scales == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    anchors = gen(maps, (size, size))
    assert anchors.shape == (total, 4) and anchors.dtype == torch.float32
    assert [h * w * b for (h, w), b in zip(maps, gen.num_anchors_per_location())] == per_map


def test_tf_layout_positions_at_320():
    anchors = DefaultBoxGenerator()(MAPS_320, (320, 320))
    # map 0 (20x20, stride 16): centre (8, 8); (0.1, 1.0) -> 32 px square; (0.2, 2.0) -> 0.2*sqrt(2)*320 wide
    w, h = 0.2 * math.sqrt(2) * 320, 0.2 / math.sqrt(2) * 320
    expected = torch.tensor([[-8.0, -8.0, 24.0, 24.0], [8 - w / 2, 8 - h / 2, 8 + w / 2, 8 + h / 2],
                             [8 - h / 2, 8 - w / 2, 8 + h / 2, 8 + w / 2]])
    torch.testing.assert_close(anchors[:3], expected)
    # row-major locations: index 3 is (row 0, column 1), index 60 is (row 1, column 0)
    torch.testing.assert_close(anchors[3], torch.tensor([8.0, -8.0, 40.0, 24.0]))
    torch.testing.assert_close(anchors[60], torch.tensor([-8.0, 8.0, 24.0, 40.0]))
    # map 1 starts at 1200: centre (16, 16), scale 0.35 -> 112 px
    torch.testing.assert_close(anchors[1200], torch.tensor([-40.0, -40.0, 72.0, 72.0]))
    # last box: the 1x1 map's interpolated box sqrt(0.95 * 1.0) at the image centre
    side = math.sqrt(0.95) * 320
    lo, hi = 160 - side / 2, 160 + side / 2
    torch.testing.assert_close(anchors[-1], torch.tensor([lo, lo, hi, hi]))


def test_tf_layout_first_anchor_at_300():
    anchors = DefaultBoxGenerator()(MAPS_300, (300, 300))
    c = 0.5 / 19 * 300
    torch.testing.assert_close(anchors[0], torch.tensor([c - 15, c - 15, c + 15, c + 15]))


def test_non_square_image_scales_x_by_width_and_y_by_height():
    gen = DefaultBoxGenerator()
    square = gen(MAPS_320, (1, 1))
    wide = gen(MAPS_320, (200, 480))
    torch.testing.assert_close(wide, square * torch.tensor([480.0, 200.0, 480.0, 200.0]))


def test_device_and_dtype():
    anchors = DefaultBoxGenerator()(MAPS_320, (320, 320), device="cpu", dtype=torch.float64)
    assert anchors.dtype == torch.float64 and anchors.device.type == "cpu"


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("size, maps", [((300, 300), MAPS_300), ((320, 320), MAPS_320),
                                        ((320, 480), [(20, 30), (10, 15), (5, 8), (3, 4), (2, 2), (1, 1)])])
def test_torchvision_layout_matches_torchvision(size, maps, clip):
    ours = DefaultBoxGenerator(layout="torchvision", clip=clip)
    ref = anchor_utils.DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95, clip=clip)
    images = ImageList(torch.zeros(1, 3, *size), [size])
    expected = ref(images, [torch.zeros(1, 1, h, w) for h, w in maps])[0]
    assert ours.num_anchors_per_location() == ref.num_anchors_per_location() == [6] * 6
    torch.testing.assert_close(ours(maps, size), expected, rtol=0, atol=1e-4)


def test_layouts_share_boxes_except_on_the_lowest_map():
    tf_gen, tv_gen = DefaultBoxGenerator(layout="tf"), DefaultBoxGenerator(layout="torchvision")
    for k in range(1, 6):  # same (scale, ratio) set, another order
        assert sorted(tf_gen.box_specs[k]) == sorted(tv_gen.box_specs[k])
    assert tf_gen.box_specs[0] == [(0.1, 1.0), (0.2, 2.0), (0.2, 0.5)]
    assert len(tv_gen.box_specs[0]) == 6


def test_clip_clamps_normalised_sizes():
    big = DefaultBoxGenerator(clip=False)(MAPS_320, (320, 320))
    clipped = DefaultBoxGenerator(clip=True)(MAPS_320, (320, 320))
    widths, clipped_widths = big[:, 2] - big[:, 0], clipped[:, 2] - clipped[:, 0]
    assert widths.max() > 320 and clipped_widths.max() <= 320 + 1e-4  # 0.95 * sqrt(2) of the side


def test_generator_errors():
    with pytest.raises(ValueError, match="layout"):
        DefaultBoxGenerator(layout="caffe")
    with pytest.raises(ValueError, match="min_scale"):
        DefaultBoxGenerator(min_scale=0.9, max_scale=0.2)
    with pytest.raises(ValueError, match="expected 6 feature map sizes"):
        DefaultBoxGenerator()(MAPS_320[:5], (320, 320))


# ---------------------------------------------------------------------------------------------
# BoxCoder


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 300
    wh = torch.rand(n, 2, generator=generator) * 90 + 10  # size ratios < 1000/16, inside the decode clamp
    return torch.cat([xy, xy + wh], dim=1)


def test_box_coder_round_trip():
    g = torch.Generator().manual_seed(0)
    coder = BoxCoder()
    boxes, anchors = _random_boxes(500, g), _random_boxes(500, g)
    deltas = coder.encode(boxes, anchors)
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, rtol=1e-5, atol=1e-3)
    # broadcasting over a batch dimension, as the model's (N, A, 4) outputs
    batched = coder.decode(deltas.expand(3, -1, -1), anchors)
    assert batched.shape == (3, 500, 4)
    torch.testing.assert_close(batched[2], boxes, rtol=1e-5, atol=1e-3)


def test_box_coder_known_values():
    coder = BoxCoder()  # weights 10, 10, 5, 5
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    assert coder.encode(anchor, anchor).abs().max() == 0
    box = torch.tensor([[5.0, 0.0, 15.0, 40.0]])  # centre moved by half the anchor width; twice as high
    torch.testing.assert_close(coder.encode(box, anchor), torch.tensor([[5.0, 5.0, 0.0, 5 * math.log(2)]]))
    # decode clamps dw/dh at log(1000/16) before exp
    huge = coder.decode(torch.tensor([[0.0, 0.0, 1000.0, 0.0]]), anchor)
    torch.testing.assert_close(huge[0, 2] - huge[0, 0], torch.tensor(10.0 * 1000 / 16))


# ---------------------------------------------------------------------------------------------
# match_anchors

ANCHORS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0],
                        [100.0, 100.0, 110.0, 110.0]])


def test_match_threshold_and_force_match():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0],       # A0 IoU 1, A1 IoU 1/3
                       [20.0, 20.0, 30.0, 36.0],     # A2 IoU 0.625
                       [100.0, 100.0, 104.0, 104.0]])  # A3 IoU 0.16: matched only by force
    assert match_anchors(gt, ANCHORS).tolist() == [0, -1, 1, 2]
    assert match_anchors(gt, ANCHORS, force_match=False).tolist() == [0, -1, 1, -1]
    assert match_anchors(gt, ANCHORS, iou_threshold=0.3, force_match=False).tolist() == [0, 0, 1, -1]


def test_match_threshold_is_inclusive():
    gt = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # IoU with A0 exactly 0.5
    assert match_anchors(gt, ANCHORS[:1], force_match=False).tolist() == [0]


def test_force_match_conflict_goes_to_the_first_box():
    # both boxes' best anchor is A0; by IoU alone A0 would take box 1, TF's force match gives it to box 0
    gt = torch.tensor([[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 10.0]])
    assert match_anchors(gt, ANCHORS, force_match=False).tolist()[0] == 1
    assert match_anchors(gt, ANCHORS).tolist() == [0, -1, -1, -1]


def test_match_without_boxes():
    matches = match_anchors(torch.zeros(0, 4), ANCHORS)
    assert matches.tolist() == [-1] * 4 and matches.dtype == torch.int64


# ---------------------------------------------------------------------------------------------
# SSDLoss

NUM_ANCHORS = 20
# 20 disjoint 10x10 anchors in a row: a box equal to anchor i overlaps no other anchor
ROW = torch.tensor([[20.0 * i, 0.0, 20.0 * i + 10, 10.0] for i in range(NUM_ANCHORS)])


def _target(anchor_ids, labels, iscrowd=None):
    target = {"boxes": ROW[list(anchor_ids)].reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}
    if iscrowd is not None:
        target["iscrowd"] = torch.tensor(iscrowd)
    return target


def _contributing(loss_fn, logits, targets):
    """Anchors whose logits receive a gradient from the classification loss, per image."""
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, torch.zeros(logits.shape[0], NUM_ANCHORS, 4), ROW, targets)["classification"]
    loss.backward()
    return [set(torch.nonzero(g.abs().sum(-1)).flatten().tolist()) for g in logits.grad]


def test_hard_negatives_three_per_positive_highest_loss_first():
    loss_fn = SSDLoss(BoxCoder())
    logits = torch.zeros(1, NUM_ANCHORS, 3)
    # background-target loss grows with the foreground logit: negatives 17 > 13 > 9 > 5 > others
    for anchor, value in ((5, 1.0), (9, 2.0), (13, 3.0), (17, 4.0)):
        logits[0, anchor, 2] = value
    assert _contributing(loss_fn, logits, [_target([0], [1])]) == [{0, 9, 13, 17}]
    two = _contributing(loss_fn, logits, [_target([0, 1], [1, 0])])[0]
    assert len(two) == 2 + 6 and {0, 1, 5, 9, 13, 17} <= two  # the two positives + 6 negatives
    ratio_1 = SSDLoss(BoxCoder(), neg_pos_ratio=1, min_negatives=0)
    assert _contributing(ratio_1, logits, [_target([0], [1])]) == [{0, 17}]
    # min_negatives is a floor: ratio 1 with one positive still takes the 3 hardest negatives
    assert _contributing(SSDLoss(BoxCoder(), neg_pos_ratio=1), logits, [_target([0], [1])]) == [{0, 9, 13, 17}]


def test_min_negatives_for_images_without_boxes():
    loss_fn = SSDLoss(BoxCoder())
    logits = torch.zeros(1, NUM_ANCHORS, 3)
    logits[0, [3, 7, 11], 1] = 2.0
    assert _contributing(loss_fn, logits, [_target([], [])]) == [{3, 7, 11}]
    out = loss_fn(logits, torch.zeros(1, NUM_ANCHORS, 4), ROW, [_target([], [])])
    expected = F.cross_entropy(logits[0, [3, 7, 11]], torch.zeros(3, dtype=torch.int64), reduction="sum")
    torch.testing.assert_close(out["classification"], expected)  # divided by max(1, 0 positives)
    assert out["localization"] == 0 and torch.isfinite(out["classification"])


def test_losses_are_normalised_by_the_positives_of_the_batch():
    coder = BoxCoder()
    loss_fn = SSDLoss(coder, neg_pos_ratio=0, min_negatives=0)  # positives only
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, NUM_ANCHORS, 4, generator=g)
    targets = [_target([2], [0]), _target([4, 9], [2, 1])]
    regression = torch.zeros(2, NUM_ANCHORS, 4)
    regression[1, 9] = torch.tensor([1.0, 0.0, 0.0, -3.0])  # smooth L1: 0.5 + 2.5 (targets are zero deltas)
    out = loss_fn(logits, regression, ROW, targets)
    # labels shift by one: foreground class c is logit c + 1
    ce = (F.cross_entropy(logits[0, [2]], torch.tensor([1]), reduction="sum")
          + F.cross_entropy(logits[1, [4, 9]], torch.tensor([3, 2]), reduction="sum"))
    torch.testing.assert_close(out["classification"], ce / 3)
    torch.testing.assert_close(out["localization"], torch.tensor(3.0 / 3))


def test_localization_targets_are_encoded_matched_boxes():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    gt = torch.tensor([[1.0, 0.0, 11.0, 12.0]])  # IoU 90/130 with anchor 0
    targets = [{"boxes": gt, "labels": torch.tensor([0])}]
    target_deltas = coder.encode(gt, anchors[:1])
    regression = torch.zeros(1, 2, 4)
    regression[0, 0] = target_deltas[0]
    assert SSDLoss(coder)(torch.zeros(1, 2, 2), regression, anchors, targets)["localization"] == 0
    out = SSDLoss(coder)(torch.zeros(1, 2, 2), torch.zeros(1, 2, 4), anchors, targets)
    torch.testing.assert_close(out["localization"], F.smooth_l1_loss(torch.zeros(4), target_deltas[0], reduction="sum"))


def test_crowd_boxes_are_not_matched():
    loss_fn = SSDLoss(BoxCoder(), neg_pos_ratio=0, min_negatives=0)
    logits = torch.zeros(1, NUM_ANCHORS, 3)
    assert _contributing(loss_fn, logits, [_target([0, 5], [0, 1], iscrowd=[0, 1])]) == [{0}]


def test_sigmoid_classification_sums_binary_cross_entropy_over_all_logits():
    loss_fn = SSDLoss(BoxCoder(), neg_pos_ratio=0, min_negatives=0, classification="sigmoid")
    logits = torch.randn(1, NUM_ANCHORS, 3, generator=torch.Generator().manual_seed(1))
    out = loss_fn(logits, torch.zeros(1, NUM_ANCHORS, 4), ROW, [_target([6], [1])])
    expected = F.binary_cross_entropy_with_logits(logits[0, 6], torch.tensor([0.0, 0.0, 1.0]), reduction="sum")
    torch.testing.assert_close(out["classification"], expected)


def test_loss_rejects_bad_targets():
    loss_fn = SSDLoss(BoxCoder())
    logits, regression = torch.zeros(1, NUM_ANCHORS, 3), torch.zeros(1, NUM_ANCHORS, 4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        loss_fn(logits, regression, ROW, [_target([0], [2])])
    with pytest.raises(ValueError, match="positive width and height"):
        loss_fn(logits, regression, ROW, [{"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="2 targets for 1 images"):
        loss_fn(logits, regression, ROW, [_target([0], [0])] * 2)
    with pytest.raises(ValueError, match="softmax"):
        SSDLoss(BoxCoder(), classification="focal")


# ---------------------------------------------------------------------------------------------
# postprocess_detections


def _logits_for(probs: torch.Tensor) -> torch.Tensor:
    """Sigmoid logits giving exactly ``probs`` (N, A, C) as class scores; background logit very low."""
    return torch.cat([torch.full_like(probs[..., :1], -20.0), torch.logit(probs)], dim=-1)


def _post(probs, anchors, size=(100, 100), **kwargs):
    return postprocess_detections(_logits_for(probs), torch.zeros(*probs.shape[:2], 4), anchors, size,
                                  box_coder=BoxCoder(), classification="sigmoid", **kwargs)


OVERLAPPING = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])  # IoU 0.82


def test_nms_keeps_the_best_of_overlapping_boxes_of_one_class():
    (det,) = _post(torch.tensor([[[0.9, 0.0001], [0.8, 0.0001]]]), OVERLAPPING)
    assert det["labels"].tolist() == [0]
    torch.testing.assert_close(det["scores"], torch.tensor([0.9]))
    torch.testing.assert_close(det["boxes"], OVERLAPPING[:1])


def test_nms_is_per_class():
    (det,) = _post(torch.tensor([[[0.9, 0.0001], [0.0001, 0.8]]]), OVERLAPPING)
    assert det["labels"].tolist() == [0, 1] and det["labels"].dtype == torch.int64
    torch.testing.assert_close(det["boxes"], OVERLAPPING)


def test_score_threshold():
    probs = torch.tensor([[[0.3, 0.0001], [0.0001, 0.05]]])
    assert _post(probs, OVERLAPPING, score_thresh=0.01)[0]["scores"].numel() == 2
    (det,) = _post(probs, OVERLAPPING, score_thresh=0.1)
    assert det["labels"].tolist() == [0]


def test_topk_candidates_per_class_and_detections_per_image():
    anchors = ROW[:10]  # disjoint: NMS removes nothing
    scores = torch.linspace(0.1, 0.9, 10)
    probs = torch.stack([scores, scores.flip(0)], dim=-1).unsqueeze(0)  # class 1 prefers the other end
    (det,) = _post(probs, anchors, size=(10, 200), topk_candidates=3)
    assert det["scores"].numel() == 6  # 3 candidates per class
    assert sorted(det["labels"].tolist()) == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(det["scores"][:2], torch.tensor([0.9, 0.9]))
    (det,) = _post(probs, anchors, size=(10, 200), topk_candidates=3, detections_per_img=4)
    assert det["scores"].numel() == 4 and bool((det["scores"][:-1] >= det["scores"][1:]).all())


def test_boxes_are_clipped_to_the_image():
    anchors = torch.tensor([[-5.0, 90.0, 20.0, 130.0]])
    (det,) = _post(torch.tensor([[[0.9]]]), anchors, size=(100, 80))
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 90.0, 20.0, 100.0]]))


def test_postprocess_matches_a_per_class_loop():
    """The per-class top-k done column-wise equals torchvision's SSD loop (threshold, top-k, NMS per class)."""
    g = torch.Generator().manual_seed(0)
    anchors = _random_boxes(60, g)
    logits, regression = torch.randn(2, 60, 5, generator=g) * 2, torch.randn(2, 60, 4, generator=g) * 0.5
    coder = BoxCoder()
    kwargs = dict(score_thresh=0.15, nms_thresh=0.5, topk_candidates=7, detections_per_img=12)
    results = postprocess_detections(logits, regression, anchors, (300, 320), box_coder=coder, **kwargs)
    for image_logits, image_regression, det in zip(logits, regression, results):
        boxes = coder.decode(image_regression, anchors).clamp(min=0)
        boxes[:, 0::2], boxes[:, 1::2] = boxes[:, 0::2].clamp(max=320), boxes[:, 1::2].clamp(max=300)
        scores = image_logits.softmax(-1)
        all_boxes, all_scores, all_labels = [], [], []
        for c in range(1, 5):
            s = scores[:, c]
            keep = torch.nonzero(s > 0.15).flatten()
            s, idx = s[keep].topk(min(7, keep.numel()))
            all_boxes.append(boxes[keep[idx]]), all_scores.append(s), all_labels.append(torch.full_like(idx, c - 1))
        b, s, l = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        keep = batched_nms(b, s, l, 0.5)[:12]
        assert det["scores"].numel() > 2  # the case is not trivial
        torch.testing.assert_close(det["scores"], s[keep])
        torch.testing.assert_close(det["boxes"], b[keep])
        assert det["labels"].tolist() == l[keep].tolist()


def test_anchors_coder_and_postprocess_agree_end_to_end():
    """Ideal predictions for a box, at its matched anchors, decode back to that box and class."""
    anchors = DefaultBoxGenerator()(MAPS_320, (320, 320))
    coder = BoxCoder()
    gt = torch.tensor([[40.0, 60.0, 150.0, 130.0]])
    matches = match_anchors(gt, anchors)
    positive = matches >= 0
    regression = coder.encode(gt, anchors).unsqueeze(0)  # every anchor regresses to the box
    logits = torch.zeros(1, anchors.shape[0], 4)
    logits[0, positive, 3] = 10.0  # class 2
    (det,) = postprocess_detections(logits, regression, anchors, (320, 320), box_coder=coder, score_thresh=0.5)
    assert det["labels"].tolist() == [2]
    torch.testing.assert_close(det["boxes"], gt, rtol=0, atol=1e-3)

"""The stage explorer's words: stage names, a plain caption under each stage, and the facts lines."""

from __future__ import annotations

from typing import Any

STAGES = ["Input", "Backbone + FPN", "Region proposals", "RoIAlign + box head", "Mask head", "Result"]

CAPTIONS = {
    "Input": (
        "The network never sees your photo at its own size. It is resized so its short side is "
        "{min_size} px (unless the long side would pass {max_size} px), each colour is normalised with "
        "ImageNet's mean and spread, and the batch is padded with zeros to a multiple of 32 px."
    ),
    "Backbone + FPN": (
        "The backbone (a ResNet-50 in the COCO models, a small MobileNetV3 in the Shapes demo) turns the "
        "photo into grids of numbers that describe edges, textures and parts. The Feature Pyramid Network "
        "mixes them into five levels, each half the size of the one before. Each picture shows one level's "
        "{channels} numbers per cell squeezed into three colours (their three "
        "strongest directions, PCA) or into brightness (energy): fine levels (P2) light up on small "
        "details, coarse ones (P5, P6) on whole large objects."
    ),
    "Region proposals": (
        "At every cell of every level the Region Proposal Network scores a few *anchors* (boxes of "
        "fixed sizes and shapes) for how likely they hold *something*, and nudges each to fit. Click "
        "the photo to see the anchors at that point. The best boxes of each level go through "
        "non-maximum suppression (overlapping boxes: only the best stays), and at most {kept:,} are kept."
    ),
    "RoIAlign + box head": (
        "Each proposal is cut out of the feature maps and resampled to a fixed 7×7 grid (RoIAlign: "
        "careful interpolation, so the cut lines up with real pixels). The box head says which class it "
        "is, with a probability for each, and refines the box. Click an object on the Result overlay, "
        "or pick it in the list, to follow it."
    ),
    "Mask head": (
        "For each kept object, RoIAlign cuts a 14×14 grid and the mask head paints 28×28 probabilities: "
        "how sure it is that each spot belongs to the object. They are stretched over the object's box "
        "and cut at the mask threshold: move it to see the mask grow or shrink. This is exactly the mask "
        "the Segment tab's download holds."
    ),
    "Result": (
        "Every object above the score threshold, painted over the photo: the same objects the Segment "
        "tab shows at these settings. Below, the time each stage took on this run and each stage's share "
        "of the network's parameters and multiply-adds."
    ),
}

NO_TRACE = "Pick a photo (upload, webcam, clipboard or an example) and press **Trace** to look inside the network."


def caption(stage: str, trace_facts: dict[str, Any] | None) -> str:
    """The plain-words caption of `stage`, filled in with this model's numbers."""
    facts = trace_facts or {}
    inputs, levels = facts.get("input", {}), facts.get("backbone", {}).get("levels", [])
    text = CAPTIONS[stage].format(
        min_size=inputs.get("min_size", 800), max_size=inputs.get("max_size", 1333),
        channels=levels[0]["shape"][0] if levels else 256, kept=facts.get("rpn", {}).get("post_nms_top_n", 1000),
    )
    return f"### {STAGES.index(stage) + 1}. {stage}\n{text}"


def input_facts(summary: dict[str, Any]) -> str:
    """The Input stage's numbers: photo size, the resize rule's result, normalisation, batch shape."""
    s = summary["input"]
    (ph, pw), (nh, nw) = s["photo_size"], s["network_size"]
    scale = min(s["min_size"] / min(ph, pw), s["max_size"] / max(ph, pw))
    mean = ", ".join(f"{v:.3f}" for v in s["mean"])
    std = ", ".join(f"{v:.3f}" for v in s["std"])
    return (
        f"- Photo: **{pw} × {ph}** px\n"
        f"- Resize: scale = min({s['min_size']} / {min(ph, pw)}, {s['max_size']} / {max(ph, pw)}) = "
        f"{scale:.4f} → network input **{nw} × {nh}** px (each side × scale, rounded down; bilinear, as torchvision)\n"
        f"- Normalise: (pixel / 255 − mean) / std, mean = ({mean}), std = ({std})\n"
        f"- Padded batch: **{' × '.join(str(v) for v in s['padded_batch_shape'])}** (N × C × H × W)"
    )


def levels_table(summary: dict[str, Any]) -> str:
    """Every FPN level's stride and shape as a Markdown table."""
    rows = ["| level | stride (down × across) | features (C × H × W) | cells over the photo (H × W) |",
            "| --- | --- | --- | --- |"]
    uneven = False
    for lv in summary["backbone"]["levels"]:
        c, h, w = lv["shape"]
        down, across = lv["stride"]
        uneven |= bool(down & (down - 1) or across & (across - 1))
        rows.append(f"| {lv['name']} | {down} × {across} | {c} × {h} × {w} | {lv['covers_photo'][0]} × {lv['covers_photo'][1]} |")
    if uneven:  # not a power of two: say why, before a student asks
        rows.append("\nStrides are the padded input's size ÷ the level's cells, as torchvision's anchor "
                    "generator computes them; P6 (P5 pooled with stride 2) rounds its cells up, so its stride "
                    "can come out a little under 64.")
    return "\n".join(rows)


def rpn_funnel(summary: dict[str, Any]) -> str:
    """The RPN's counts, anchors to kept proposals."""
    r = summary["rpn"]
    per_cell = ", ".join(str(n) for n in r["anchors_per_cell"])
    return (
        f"**{r['anchors']:,}** anchors ({per_cell} per cell on each level) → **{r['top_k_per_level']:,}** "
        f"best of each level (at most {r['pre_nms_top_n']:,} per level) → **{r['not_small']:,}** inside and "
        f"not tiny → **{r['above_floor']:,}** above the RPN's floor → **{r['after_nms']:,}** after NMS "
        f"(IoU > {r['nms_threshold']:.2f} removed) → **{r['kept']:,}** kept (at most {r['post_nms_top_n']:,})."
    )


def box_funnel(summary: dict[str, Any]) -> str:
    """The box head's counts, proposals to shown objects."""
    b = summary["box_head"]
    return (
        f"**{b['proposals']:,}** proposals × classes = **{b['class_pairs']:,}** (box, class) pairs → "
        f"**{b['above_score_floor']:,}** score above {b['score_floor']:.2f} → **{b['not_empty']:,}** non-empty → "
        f"**{b['after_class_nms']:,}** after per-class NMS (IoU > {b['nms_threshold']:.2f}) → "
        f"**{b['real_class_candidates']:,}** candidates → **{b['shown']:,}** at score ≥ "
        f"{summary['score_threshold']:.2f} (and the cap)."
    )

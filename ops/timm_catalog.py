"""A catalog of timm's pretrained models, with meta-parameters read from timm's own registry.

Nothing is downloaded: names and tags come from `timm.list_pretrained`, families from the module
that defines each architecture. Tags such as `in22k_ft_in1k` or `laion2b_ft_in12k_in1k` name the
data sets: the last one is the training set, earlier ones the pre-training sets.
"""

from __future__ import annotations

import re

DATASETS = {
    "in1k": "imagenet-1k", "in12k": "imagenet-12k", "in21k": "imagenet-21k", "in22k": "imagenet-22k",
    "laion2b": "laion-2b", "laion400m": "laion-400m", "laiona": "laion-aesthetic", "openai": "openai-wit",
    "yfcc100m": "yfcc-100m", "ig1b": "instagram-1b", "ig3b": "instagram-3b", "jft300m": "jft-300m",
    "cc12m": "cc-12m", "dfn2b": "dfn-2b", "datacompxl": "datacomp-xl", "metaclip": "metaclip-2.5b",
    "merged2b": "merged-2b", "lvd142m": "lvd-142m", "lvd1689m": "lvd-1689m", "webli": "webli", "inat21": "inaturalist-2021",
    "places365": "places-365", "coco": "coco", "mim": "imagenet-1k",
}
CLASSES_TO_DATASET = {1000: "imagenet-1k", 11821: "imagenet-12k", 21841: "imagenet-21k", 21843: "imagenet-21k"}


def datasets_of_tag(tag: str, num_classes: int | None = None) -> tuple[str, str]:
    """(train_dataset, pretrain_dataset) named by a pretrained tag; '' where it names none."""
    found = [DATASETS[token] for token in re.split(r"[_\-]", tag.lower()) if token in DATASETS]
    found = list(dict.fromkeys(found))
    if not found:
        return CLASSES_TO_DATASET.get(num_classes or 0, ""), ""
    return found[-1], "+".join(found[:-1])


def family_of(arch: str) -> str:
    import timm

    return timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]


def timm_catalog_rows(include: list[str] | None = None, exclude: list[str] | None = None) -> list[dict]:
    """One catalog row per pretrained timm model matching the patterns (fnmatch style)."""
    import timm

    names = timm.list_pretrained(filter=include or "", exclude_filters=exclude or "")
    rows = []
    for name in names:
        arch, _, tag = name.partition(".")
        cfg = timm.models.get_pretrained_cfg(name)
        cfg = cfg.to_dict() if cfg is not None else {}
        train, pretrain = datasets_of_tag(tag, cfg.get("num_classes"))
        rows.append({
            "model_id": name, "source": "timm", "uri": name, "pretrained": "true",
            "input_size": "x".join(map(str, cfg.get("input_size", ()))),
            "family": family_of(arch), "task": "classification", "train_dataset": train,
            "pretrain_dataset": pretrain, "visual_category": "natural", "pretrained_tag": tag,
        })
    return rows

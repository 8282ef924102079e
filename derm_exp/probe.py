"""Linear probe of frozen backbone features: are a weights file's features ImageNet-trained,
and which timm variant (padding) do they fit?

``python -m derm_exp.probe --data-root DIR`` takes one image per lesion from the lesion-aware
split (train lesions for fitting, test lesions for scoring), extracts globally pooled features
of each (model, weights, normalisation) variant with the eval transform, fits a class-balanced
logistic regression on standardised features and prints balanced accuracy and macro AUC on the
test lesions. Random-init features of the first model are the floor: trained features must be
far above it. Figures and the command: docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMS = {"imagenet": IMAGENET, "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


@dataclass(frozen=True)
class Variant:
    """One feature extractor: timm model, weights (None = random init) and normalisation."""

    model: str
    weights: str | None
    norm: str

    @property
    def label(self) -> str:
        return f"{self.model} | {self.weights or 'random init'} | {self.norm}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m derm_exp.probe",
        description=__doc__.split("\n\n")[0] + " Research use only, not a medical device.",
        epilog="Example: python -m derm_exp.probe --data-root data/HAM10000_200x150",
    )
    p.add_argument("--data-root", default=None, help="HAM10000-format folder (default: demo)")
    p.add_argument("--models", default="tf_efficientnet_lite0,efficientnet_lite0")
    p.add_argument(
        "--weights",
        default="offline:efficientnet_lite0",
        help="model.pretrained_file value for every model; random init of the first model is "
        "always added",
    )
    p.add_argument(
        "--norms",
        default="imagenet,half",
        help="imagenet and/or half (mean=std=0.5); all on the first model, the first on others",
    )
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--train-lesions", type=int, default=1500)
    p.add_argument("--test-lesions", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    return p.parse_args(argv)


def variants(args: argparse.Namespace) -> list[Variant]:
    models = [m for m in args.models.split(",") if m]
    norms = [n for n in args.norms.split(",") if n]
    bad = [n for n in norms if n not in NORMS]
    if bad or not models or not norms:
        raise SystemExit(f"error: --norms takes {', '.join(NORMS)}; --models must not be empty")
    # Every normalisation on the first model; the other models with the first one only.
    out = [Variant(models[0], args.weights, norms[0]), Variant(models[0], None, norms[0])]
    out += [Variant(m, args.weights, norms[0]) for m in models[1:]]
    return out + [Variant(models[0], args.weights, n) for n in norms[1:]]


def probe_images(data_root: str | None, n_train: int, n_test: int, seed: int):
    """(train, test) frames, one image per lesion, from the lesion-aware split."""
    from omegaconf import OmegaConf

    from derm_exp.config import PROJECT_ROOT
    from derm_exp.data.metadata import load_metadata
    from derm_exp.data.splits import split_dataset
    from derm_exp.data.synthetic import resolve_data_root

    demo = {"dir": str(PROJECT_ROOT / "data" / "demo"), "n_images": 800, "seed": 0}
    root = resolve_data_root(OmegaConf.create({"root": data_root, "demo": demo}))
    frame = split_dataset(load_metadata(root, "HAM10000_metadata.csv"), 0.15, 0.15, seed=42)
    one = frame.sort_values("image_id").drop_duplicates("lesion_id")
    train = one[one["split"] == "train"]
    test = one[one["split"] == "test"]
    train = train.sample(n=min(n_train, len(train)), random_state=seed)
    test = test.sample(n=min(n_test, len(test)), random_state=seed)
    return train, test


def extract(variant: Variant, paths: list[str], image_size: int, batch_size: int):
    """Globally pooled frozen features (N, C) of ``paths``."""
    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from derm_exp.data.transforms import build_eval_transform
    from derm_exp.models.backbone import create_backbone, resolve_data_config

    torch.manual_seed(0)
    backbone = create_backbone(variant.model, pretrained_file=variant.weights).eval()
    cfg = resolve_data_config(backbone, image_size)
    cfg["mean"], cfg["std"] = NORMS[variant.norm]
    transform = build_eval_transform(cfg)
    feats = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(paths), batch_size), desc="features", leave=False):
            batch = []
            for p in paths[i : i + batch_size]:
                with Image.open(p) as im:
                    batch.append(transform(im.convert("RGB")))
            out = backbone.forward_features(torch.stack(batch))
            feats.append(out.mean(dim=(2, 3)).float().numpy())
    return np.concatenate(feats)


def score(x_train, y_train, x_test, y_test) -> tuple[float, float]:
    """Balanced accuracy and macro one-vs-rest AUC of a balanced logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", C=0.1, max_iter=3000)
    )
    clf.fit(x_train, y_train)
    proba = clf.predict_proba(x_test)
    ba = balanced_accuracy_score(y_test, clf.classes_[proba.argmax(1)])
    auc = roc_auc_score(y_test, proba, multi_class="ovr", average="macro", labels=clf.classes_)
    return float(ba), float(auc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe and print one row per variant."""
    args = parse_args(argv)
    chosen = variants(args)
    from tqdm import tqdm

    from derm_exp.errors import UserError

    try:
        train, test = probe_images(args.data_root, args.train_lesions, args.test_lesions, args.seed)
        print(f"probe: {len(train)} train lesions, {len(test)} test lesions, {args.image_size} px")
        width = max(len(v.label) for v in chosen)
        print(f"{'model | weights | normalisation':<{width}}  balanced_acc  macro_auc")
        for v in tqdm(chosen, desc="variants", file=sys.stderr):
            x_tr = extract(v, list(train["path"]), args.image_size, args.batch_size)
            x_te = extract(v, list(test["path"]), args.image_size, args.batch_size)
            ba, auc = score(x_tr, train["label"], x_te, test["label"])
            print(f"{v.label:<{width}}  {ba:12.3f}  {auc:9.3f}", flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Omniglot exemplars for Singh et al. 2024: frozen ResNet-18 features, ``[150 classes, 5 drawings, 512]``.

The paper embeds Omniglot drawings with an ImageNet-trained ResNet-18 (512-d global average pool,
post-ReLU). ImageNet weights cannot be fetched here, so this script trains the same architecture
(torchvision's ResNet-18, written out below because no torchvision build matches the project's CPU
torch) *supervised* on the Omniglot characters that are NOT exemplar classes, then embeds 5 drawings
of each of the 150 held-apart characters. Deterministic: fixed seeds, 1 torch thread, no data
loader workers. Run from the repository root (see README.md beside this file)::

    nice -n 5 .venv/bin/python experiments/singh2024/omniglot/make_features.py /tmp/small1.zip /tmp/small2.zip
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

HERE = Path(__file__).resolve().parent
OUT_NPY, OUT_JSON = HERE / "omniglot_resnet18_features.npy", HERE / "omniglot_resnet18_features.json"
# Study 6's "200 training classes": the small zips hold 242 characters, too few for 200 + 100 distinct
# exemplar characters beside the extractor's, so the 200 are the 50 training characters at 0/90/180/270
# degrees (rotations as new classes, like the extractor's); the 100 held-out classes stay the same.
OUT300_NPY, OUT300_JSON = HERE / "omniglot_resnet18_features_300.npy", HERE / "omniglot_resnet18_features_300.json"
SEED, THREADS = 0, 1  # one thread: on the shared 2-core machine a second one spun more than it computed
N_TRAIN_CLASSES, N_HOLDOUT_CLASSES, N_DRAWINGS = 50, 100, 5
RES, EPOCHS, BATCH, LR, WEIGHT_DECAY = 48, 4, 64, 0.1, 5e-4
VAL_DRAWINGS = 4  # extractor classes: drawings 17-20 are its validation set, 1-16 train it
ROTATIONS = 4     # each extractor character at 0/90/180/270 degrees is its own class (as in the transience paper's Omniglot)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the paper's ImageNet input normalisation


# ---------------------------------------------------------------- ResNet-18 (torchvision.models.resnet18)
class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1-conv) shortcut; ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (same modules, names and init); ``features`` = post-ReLU average pool."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, c_in = (64, 128, 256, 512), 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c_in, w, stride), BasicBlock(w, w, 1)))
            c_in = w
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# ---------------------------------------------------------------- data
def read_characters(zips: list[Path]) -> dict[tuple[str, str], list[tuple[str, bytes]]]:
    """``(alphabet, character) -> [(png name, bytes)]`` sorted by name, duplicates across zips merged.

    images_background_small1 and small2 both hold Greek and Latin, byte for byte: 242 distinct
    characters, not 292. A duplicate path with different bytes is an error.
    """
    chars: dict[tuple[str, str], dict[str, bytes]] = {}
    for zpath in zips:
        with zipfile.ZipFile(zpath) as z:
            for name in z.namelist():
                if not name.endswith(".png"):
                    continue
                _, alphabet, character, png = name.split("/")
                drawings = chars.setdefault((alphabet, character), {})
                data = z.read(name)
                if drawings.get(png, data) != data:
                    raise ValueError(f"{alphabet}/{character}/{png} differs between zips; expected identical duplicates")
                drawings[png] = data
    return {k: sorted(v.items()) for k, v in sorted(chars.items())}


def split_characters(keys: list[tuple[str, str]], rng: np.random.Generator) -> dict[str, list[tuple[str, str]]]:
    """Exemplar-train / exemplar-held-out / extractor characters, each alphabet shared in proportion.

    Per alphabet (sorted), characters are permuted by ``rng``; quotas of 50 and 100 classes are
    spread over alphabets by size (largest remainder), the rest train the extractor. So training
    and held-out exemplar classes come from the same alphabets, and the extractor sees every alphabet.
    """
    alphabets = sorted({a for a, _ in keys})
    sizes = np.array([sum(a == b for b, _ in keys) for a in alphabets])

    def quota(total: int) -> np.ndarray:
        exact = sizes * total / sizes.sum()
        q = np.floor(exact).astype(int)
        q[np.argsort(-(exact - q), kind="stable")[: total - q.sum()]] += 1
        return q

    q_train, q_hold = quota(N_TRAIN_CLASSES), quota(N_HOLDOUT_CLASSES)
    out: dict[str, list[tuple[str, str]]] = {"train": [], "holdout": [], "extractor": []}
    for a, nt, nh in zip(alphabets, q_train, q_hold):
        chars = sorted(c for b, c in keys if b == a)
        perm = [chars[i] for i in rng.permutation(len(chars))]
        out["train"] += [(a, c) for c in sorted(perm[:nt])]
        out["holdout"] += [(a, c) for c in sorted(perm[nt: nt + nh])]
        out["extractor"] += [(a, c) for c in sorted(perm[nt + nh:])]
    return out


def to_tensor(pngs: list[bytes]) -> torch.Tensor:
    """PNG drawings -> ``[N, 3, RES, RES]`` normalised like the paper's (grayscale x3, ImageNet mean/std)."""
    arrs = [np.asarray(Image.open(io.BytesIO(b)).convert("L").resize((RES, RES), Image.BILINEAR), dtype=np.float32) / 255.0 for b in pngs]
    x = torch.from_numpy(np.stack(arrs))[:, None].expand(-1, 3, -1, -1)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light per-image affine jitter: rotation ±10°, scale 0.9-1.1, shift ±10%; border pixels fill."""
    n = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731
    ang, s, tx, ty = u(-math.pi / 18, math.pi / 18), u(0.9, 1.1), u(-0.1, 0.1), u(-0.1, 0.1)
    theta = torch.stack([torch.stack([torch.cos(ang) / s, -torch.sin(ang) / s, tx], 1),
                         torch.stack([torch.sin(ang) / s, torch.cos(ang) / s, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


# ---------------------------------------------------------------- training and geometry
def accuracy(model: ResNet18, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i: i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def train_extractor(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, n_classes: int) -> tuple[ResNet18, dict]:
    """SGD + momentum, one-cycle cosine lr, light augmentation; returns the model and its accuracies."""
    gen = torch.Generator().manual_seed(SEED)
    model = ResNet18(n_classes)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=WEIGHT_DECAY, nesterov=True)
    steps = EPOCHS * math.ceil(len(x) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.15)
    log = []
    for epoch in range(EPOCHS):
        model.train()
        perm, total = torch.randperm(len(x), generator=gen), 0.0
        for i in range(0, len(x), BATCH):
            idx = perm[i: i + BATCH]
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log.append(round(total / len(x), 4))
        print(f"epoch {epoch + 1}/{EPOCHS} loss {log[-1]:.4f}", flush=True)
    return model, {"train_loss_per_epoch": log, "train_accuracy": accuracy(model, x, y), "val_accuracy": accuracy(model, xv, yv)}


def geometry(f: np.ndarray, n_train: int = N_TRAIN_CLASSES) -> dict[str, float]:
    """Cosine structure of ``[classes, exemplars, dim]``: within-class vs between-class pairs, zeros, norms."""
    C, E, _ = f.shape
    u = f.reshape(C * E, -1) / np.linalg.norm(f.reshape(C * E, -1), axis=1, keepdims=True)
    cos = u @ u.T
    cls = np.repeat(np.arange(C), E)
    same, off = cls[:, None] == cls[None, :], ~np.eye(C * E, dtype=bool)
    means = f.mean(1) / np.linalg.norm(f.mean(1), axis=1, keepdims=True)
    mcos = means @ means.T
    # leave-one-out nearest class mean (from the other 4 drawings), over all classes
    sums = f.sum(1)
    hits = 0
    for c in range(C):
        for e in range(E):
            cent = sums.copy()
            cent[c] = (sums[c] - f[c, e]) / (E - 1)
            cent[np.arange(C) != c] /= E
            cent /= np.linalg.norm(cent, axis=1, keepdims=True)
            hits += int(np.argmax(cent @ (f[c, e] / np.linalg.norm(f[c, e]))) == c)
    return {
        "within_class_cosine": float(cos[same & off].mean()),
        "between_class_cosine": float(cos[~same].mean()),
        "between_class_mean_cosine": float(mcos[~np.eye(C, dtype=bool)].mean()),
        "train_slot_between_class_cosine": float((lambda m: m[~np.eye(n_train, dtype=bool)].mean())(u[cls < n_train][::E] @ u[cls < n_train][::E].T)),
        "fraction_zeros": float((f == 0).mean()),
        "mean_norm": float(np.linalg.norm(f, axis=2).mean()),
        "mean_value": float(f.mean()),
        "nearest_class_mean_accuracy_loo": hits / (C * E),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_rotated(model: ResNet18, chars: dict, groups: dict, prov: dict) -> None:
    """The 300-class file: training characters at 4 rotations (rows r*50 + i), then the 100 held-out ones upright."""
    rows = [(k, r) for r in range(ROTATIONS) for k in groups["train"]] + [(k, 0) for k in groups["holdout"]]
    with torch.no_grad():
        feats = torch.stack([model.features(torch.rot90(to_tensor([b for _, b in chars[k][:N_DRAWINGS]]), r, dims=(2, 3)))
                             for k, r in rows]).numpy().astype(np.float32)
    assert feats.shape == (ROTATIONS * N_TRAIN_CLASSES + N_HOLDOUT_CLASSES, N_DRAWINGS, 512) and (feats >= 0).all()
    np.save(OUT300_NPY, feats)
    n_train = ROTATIONS * N_TRAIN_CLASSES
    out = {k: v for k, v in prov.items() if k not in ("classes", "geometry", "wall_s", "cpu_s")}
    out |= {
        "file": OUT300_NPY.name, "sha256": sha256(OUT300_NPY), "shape": list(feats.shape),
        "what": f"as {OUT_NPY.name}, but classes 0-{n_train - 1} are its {N_TRAIN_CLASSES} training characters rotated by "
                f"90*(index // {N_TRAIN_CLASSES}) degrees (rotations as new classes) and {n_train}-{n_train + N_HOLDOUT_CLASSES - 1} "
                f"its {N_HOLDOUT_CLASSES} held-out characters upright (base.yaml: holdout_classes 100); same extractor",
        "classes": [{"index": i, "split": "train" if i < n_train else "holdout", "alphabet": a, "character": c,
                     "rotation_degrees": 90 * r, "drawings": [n for n, _ in chars[(a, c)][:N_DRAWINGS]]}
                    for i, ((a, c), r) in enumerate(rows)],
        "geometry": geometry(feats, n_train),
    }
    OUT300_JSON.write_text(json.dumps(out, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("zips", nargs="+", type=Path, help="images_background_small1.zip and small2.zip of brendenlake/omniglot")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    t0, c0 = time.time(), time.process_time()

    chars = read_characters(args.zips)
    groups = split_characters(list(chars), np.random.default_rng(SEED))
    # extractor data: ROTATIONS x characters classes; drawings 1..16 train, 17..20 validate
    ext = groups["extractor"]
    imgs = torch.stack([to_tensor([b for _, b in chars[k]]) for k in ext])  # [K, 20, 3, R, R]
    n_train_d = imgs.shape[1] - VAL_DRAWINGS
    xs, ys, xvs, yvs = [], [], [], []
    for r in range(ROTATIONS):
        rot = torch.rot90(imgs, r, dims=(3, 4))
        lab = torch.arange(len(ext)) + r * len(ext)
        xs.append(rot[:, :n_train_d].flatten(0, 1)), ys.append(lab.repeat_interleave(n_train_d))
        xvs.append(rot[:, n_train_d:].flatten(0, 1)), yvs.append(lab.repeat_interleave(VAL_DRAWINGS))
    model, stats = train_extractor(torch.cat(xs), torch.cat(ys), torch.cat(xvs), torch.cat(yvs), ROTATIONS * len(ext))

    exemplar_classes = groups["train"] + groups["holdout"]
    model.eval()
    with torch.no_grad():
        feats = torch.stack([model.features(to_tensor([b for _, b in chars[k][:N_DRAWINGS]])) for k in exemplar_classes])
    feats_np = feats.numpy().astype(np.float32)
    assert feats_np.shape == (N_TRAIN_CLASSES + N_HOLDOUT_CLASSES, N_DRAWINGS, 512) and (feats_np >= 0).all()
    np.save(OUT_NPY, feats_np)

    prov = {
        "file": OUT_NPY.name,
        "sha256": sha256(OUT_NPY),
        "shape": list(feats_np.shape),
        "dtype": "float32",
        "what": "ResNet-18 global-average-pool features (post-ReLU, 512-d) of Omniglot drawings; "
                "classes 0-49 train, 50-149 held out (base.yaml: holdout_classes 100); drawing 0 is the training exemplar",
        "script": "experiments/singh2024/omniglot/make_features.py",
        "script_sha256": sha256(Path(__file__).resolve()),
        "source": {"repo": "github.com/brendenlake/omniglot (MIT, see LICENSE-omniglot.txt)",
                   "zips": {p.name: sha256(p) for p in args.zips}, "distinct_characters": len(chars)},
        "classes": [{"index": i, "split": "train" if i < N_TRAIN_CLASSES else "holdout", "alphabet": a, "character": c,
                     "drawings": [n for n, _ in chars[(a, c)][:N_DRAWINGS]]} for i, (a, c) in enumerate(exemplar_classes)],
        "extractor": {
            "architecture": "torchvision resnet18 (BasicBlock [2,2,2,2], written out in the script), trained from scratch",
            "characters": [f"{a}/{c}" for a, c in ext],
            "classes": ROTATIONS * len(ext), "rotations_as_classes": ROTATIONS,
            "train_drawings_per_class": n_train_d, "val_drawings_per_class": VAL_DRAWINGS,
            "resolution": RES, "epochs": EPOCHS, "batch_size": BATCH, "lr": LR, "weight_decay": WEIGHT_DECAY,
            "optimizer": "SGD nesterov momentum 0.9, one-cycle cosine lr (15% warm-up)",
            "augmentation": "per-image affine: rotation +-10 deg, scale 0.9-1.1, shift +-10%",
            **stats,
        },
        "seeds": {"split": SEED, "torch": SEED, "augment_and_order": SEED},
        "torch": torch.__version__, "torch_threads": THREADS,
        "geometry": geometry(feats_np),
        "wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
    }
    OUT_JSON.write_text(json.dumps(prov, indent=1) + "\n")
    write_rotated(model, chars, groups, prov)
    print(json.dumps({k: prov[k] for k in ("geometry", "wall_s", "cpu_s")} | {"val_accuracy": stats["val_accuracy"]}, indent=1))


if __name__ == "__main__":
    main()

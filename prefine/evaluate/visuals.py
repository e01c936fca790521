"""The pictures of a run (the visualize stage): what the encoders learned (a t-SNE map of test
embeddings, the unlabeled images closest to test images), what training sees (augmented views),
and where pretraining paid (per-class gains, the most confused pairs).

Sized for the default run on a 2-core CPU: t-SNE on a seeded sample of the test set, neighbours by
a chunked top-k over a sample of the pool. The splits may stay on disk (open_split): each picture
reads only the rows it embeds or shows, a chunk at a time, so memory does not grow with them.
Every sample is drawn with a fixed seed, so two runs show the same images and points.
Matplotlib's Agg canvas only: no display, no pyplot state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits
from torch import nn

from prefine.atomic import atomic_path
from prefine.data.augment import one_view, strong_view, two_views, weak_view
from prefine.data.store import ImageSet, Pixels, gather
from prefine.evaluate.metrics import predict
from prefine.evaluate.probe import embed
from prefine.models.nets import to_float
from prefine.params import Params

SEED = 0  # every sample below: the same images and points on every run
MAP_SAMPLE = 1000  # test images on the t-SNE map: t-SNE of 2,000 took 18 s, of 1,000 5 s (busy 2-core CPU)
MAP_PCA = 50  # dimensions t-SNE starts from (PCA first: the usual speed-up)
TSNE_ITERATIONS = 500
NEIGHBOUR_QUERIES = 2  # test images per class
NEIGHBOURS = 5  # closest unlabeled images shown per test image
POOL_SAMPLE = 10_000  # unlabeled images searched for neighbours (seeded sample): bounds the time
POOL_CHUNK = 4096  # of them read and embedded at a time: bounds the memory of the search
PAIRS = 5  # most confused class pairs shown
PAIR_EXAMPLES = 6  # test images per pair
EXAMPLE_BATCH = 256  # test images predicted at a time while looking for them
VIEW_METHODS = ("simclr", "vicreg")  # pretraining methods that learn from two augmented views
CELL = 0.7  # inches per image in the grids
LABELS_WIDTH, TITLE_HEIGHT = 1.3, 0.6  # inches left of a grid (row labels) and above it (title, 2 lines)


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A figure on its own Agg canvas: no display needed, no pyplot state to leak."""
    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    """PNG at 100 dpi, written beside `path` and renamed into place."""
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def _as_float(image: torch.Tensor) -> torch.Tensor:
    """Stored uint8 pixels or an augmented float view, as floats in [0, 1]."""
    return to_float(image) if image.dtype == torch.uint8 else image.clamp(0, 1)


Cells = list[list[torch.Tensor | None]]  # rows of [C, H, W] images (uint8, or float in [0, 1]); None: empty


def _mosaic(cells: Cells, shape: torch.Size, gap: tuple[int, int]) -> torch.Tensor:
    """The cells (each of `shape`, [C, H, W]) as one float image on white, `gap` (rows, columns)
    pixels apart, the row gap above each row (room for captions)."""
    c, h, w = shape
    rows, columns = len(cells), max(map(len, cells))
    canvas = torch.ones(c, rows * (h + gap[0]), columns * (w + gap[1]))
    for r, row in enumerate(cells):
        for k, image in enumerate(row):
            if image is not None:
                top, left = r * (h + gap[0]) + gap[0], k * (w + gap[1])
                canvas[:, top : top + h, left : left + w] = _as_float(image)
    return canvas


def draw_grid(cells: Cells, shape: torch.Size, row_labels: list[str], captions: list[list[str]], title: str,
              path: Path) -> None:
    """Rows of images of `shape` ([C, H, W]) drawn as one mosaic on one axes (a figure of 120 axes
    took 13 s on a busy 2-core machine), a label left of each row and a caption above each cell
    (row by row; a short list leaves the rest bare)."""
    h, w = shape[1:]
    gap = (h // 2, max(w // 8, 2))
    canvas = _mosaic(cells, shape, gap)
    inch = CELL / h  # inches per pixel
    width, height = canvas.shape[2] * inch + LABELS_WIDTH, canvas.shape[1] * inch + TITLE_HEIGHT
    figure = _figure(width, height, layout=None)
    ax = figure.add_axes((LABELS_WIDTH / width, 0, 1 - LABELS_WIDTH / width, 1 - TITLE_HEIGHT / height))
    ax.imshow(canvas.permute(1, 2, 0).squeeze(2).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    for r, label in enumerate(row_labels):
        ax.text(-gap[1], r * (h + gap[0]) + gap[0] + h / 2, label, ha="right", va="center", fontsize=8)
    for r, row in enumerate(captions):
        for k, text in enumerate(row):
            ax.text(k * (w + gap[1]) + w / 2, r * (h + gap[0]) + gap[0] - 1, text, ha="center", va="bottom", fontsize=7)
    figure.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    _save(figure, path)


def sample(n: int, size: int) -> torch.Tensor:
    """`size` of range(n) (all when n is smaller), drawn with SEED, sorted."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(SEED))[:size].sort().values


def per_class(labels: torch.Tensor, count: int, classes: int) -> torch.Tensor:
    """`count` indices of each class (fewer if it has fewer), drawn with SEED, in class order."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED))
    return torch.cat([order[labels[order] == c][:count] for c in range(classes)])


def tsne(embeddings: torch.Tensor) -> np.ndarray:
    """2-D t-SNE of [N, D] embeddings, after a PCA to MAP_PCA dimensions; the perplexity is
    capped for tiny samples, where it must stay below N. One thread, as the baselines: on a busy
    2-core machine OpenMP's threads made 2,000 points take 47 s instead of 18 s."""
    x = embeddings.numpy()
    perplexity = min(30.0, (len(x) - 1) / 3)
    with threadpool_limits(limits=1):
        x = PCA(min(MAP_PCA, *x.shape), random_state=SEED).fit_transform(x)
        return TSNE(2, perplexity=perplexity, init="pca", max_iter=TSNE_ITERATIONS,
                    random_state=SEED).fit_transform(x)


def class_colours(classes: int) -> list:
    """tab10 up to ten classes (Fashion-MNIST's), else an even spread over turbo."""
    if classes <= 10:
        return [colormaps["tab10"](c) for c in range(classes)]
    return [colormaps["turbo"](c / max(classes - 1, 1)) for c in range(classes)]


def embedding_map(encoders: dict[str, nn.Module], test: ImageSet, path: Path, device: torch.device) -> None:
    """One t-SNE panel per encoder (title -> encoder) of the same MAP_SAMPLE test images,
    coloured by class: whether its embedding separates the classes, side by side."""
    index = sample(len(test), MAP_SAMPLE)
    labels = test.labels[index].numpy()
    colours = class_colours(len(test.classes))
    figure = _figure(4.6 * len(encoders), 5.2)
    for ax, (title, encoder) in zip(figure.subplots(1, len(encoders), squeeze=False)[0], encoders.items()):
        xy = tsne(embed(encoder, gather(test.images, index), device))
        for c, name in enumerate(test.classes):
            ax.scatter(*xy[labels == c].T, s=3, color=colours[c], label=name, rasterized=True)
        ax.set(title=title, xticks=[], yticks=[])
    handles, names = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncols=min(5, len(names)), markerscale=4)
    figure.suptitle(f"t-SNE of {len(index)} test images")
    _save(figure, path)


def nearest(encoder: nn.Module, queries: torch.Tensor, pool: torch.Tensor | Pixels, rows: torch.Tensor, k: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity and pool row of the `k` closest images among the pool's `rows` to each
    query image, best first. The rows are read (from disk, for a split opened with open_split)
    and embedded POOL_CHUNK at a time and only the running top-k is kept, so memory follows the
    chunk, not the pool."""
    q = F.normalize(embed(encoder, queries, device), dim=1)
    best = torch.full((len(q), 0), -float("inf"))
    where = torch.zeros((len(q), 0), dtype=torch.long)
    for start in range(0, len(rows), POOL_CHUNK):
        chunk = rows[start : start + POOL_CHUNK]
        z = F.normalize(embed(encoder, gather(pool, chunk), device), dim=1)
        candidates = torch.cat([where, chunk.expand(len(q), -1)], dim=1)
        best, pick = torch.cat([best, q @ z.T], dim=1).topk(min(k, candidates.shape[1]), dim=1)
        where = candidates.gather(1, pick)
    return best, where


def neighbours(encoder: nn.Module, test: ImageSet, pool: torch.Tensor | Pixels, path: Path,
               device: torch.device) -> None:
    """NEIGHBOUR_QUERIES test images per class (a row each) and their NEIGHBOURS closest
    images, in the encoder's space, among POOL_SAMPLE unlabeled ones, with their cosine
    similarity. A sample: embedding all 60,000 of Fashion-MNIST's took 83 s on a busy 2-core CPU.
    The pool stays where it is (open_split: on disk); only a chunk of it and the images shown
    are read."""
    rows = sample(len(pool), POOL_SAMPLE)
    queries = per_class(test.labels, NEIGHBOUR_QUERIES, len(test.classes))
    shown = gather(test.images, queries)
    similarity, found = nearest(encoder, shown, pool, rows, NEIGHBOURS, device)
    closest = gather(pool, found.flatten()).view(*found.shape, *pool.shape[1:])
    cells = [[shown[row], *closest[row]] for row in range(len(queries))]
    captions = [["test image" if row == 0 else "", *(f"{v:.3f}" for v in scores)]
                for row, scores in enumerate(similarity)]
    labels = [test.classes[test.labels[q]] for q in queries]
    title = f"Closest of {len(rows):,} unlabeled images to test images\n(cosine similarity, pretrained encoder)"
    draw_grid(cells, test.shape[1:], labels, captions, title, path)


def augmented_views(images: torch.Tensor, params: Params) -> dict[str, torch.Tensor]:
    """Views of uint8 `images` as training makes them under `params` (title -> float images):
    the two views of simclr/vicreg, cluster's one view (denoising: its noisy input; autoencoder and
    gan see the image as is), fine-tuning's shift and flip, and the strong view the pool images
    get under semisup (FixMatch's) and propagate (after the shift and flip)."""
    x, g = to_float(images), torch.Generator().manual_seed(SEED)
    pre, fine = params.pretrain, params.finetune
    views = {"original": x}
    if pre.method in VIEW_METHODS:
        first, second = two_views(x, g)
        views |= {f"{pre.method}\nview 1": first, f"{pre.method}\nview 2": second}
    elif pre.method == "cluster":
        views["cluster\nview"] = one_view(x, g)
    elif pre.method == "denoising":  # as objectives.Autoencoder corrupts its input
        views[f"denoising input\nnoise {pre.noise}"] = (x + pre.noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
    shifted = weak_view(x, fine.shift, fine.flip, g)
    views[f"fine-tune\nshift {fine.shift}, flip {fine.flip}"] = shifted
    if fine.strategy == "semisup":
        views["FixMatch\nstrong view"] = strong_view(x, g)
    elif fine.strategy == "propagate":
        views["pool images\nstrong view"] = strong_view(shifted, g)
    return views


def augmentation_preview(labeled: ImageSet, params: Params, path: Path) -> None:
    """A row per class (one labeled image each), a column per view of augmented_views."""
    index = per_class(labeled.labels, 1, len(labeled.classes))
    views = augmented_views(gather(labeled.images, index), params)
    cells = [[images[row] for images in views.values()] for row in range(len(index))]
    labels = [labeled.classes[labeled.labels[i]] for i in index]
    title = "Training images and the views\ntraining makes of them"
    draw_grid(cells, labeled.shape[1:], labels, [list(views)], title, path)


def class_gain_chart(gains: Sequence[dict], path: Path) -> None:
    """A bar per class (gallery.class_gains rows): pretrained minus scratch test accuracy, in
    percentage points, green where pretraining helped."""
    names = [row["class"] for row in gains]
    points = [100 * row["gain"] for row in gains]
    figure = _figure(max(6.0, 0.7 * len(names)), 4.2)
    ax = figure.subplots()
    bars = ax.bar(names, points, color=["tab:green" if p > 0 else "tab:red" for p in points])
    ax.bar_label(bars, fmt="%+.1f", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(ylabel="accuracy gain (percentage points)", title="Pretrained minus scratch, test accuracy per class")
    for label in ax.get_xticklabels():
        label.set(rotation=45, ha="right", rotation_mode="anchor")
    ax.margins(y=0.15)
    _save(figure, path)


def top_confusions(counts: np.ndarray, pairs: int) -> list[tuple[int, int]]:
    """The (actual, predicted) class pairs with the most mistakes, most first; never a pair
    without any."""
    off = counts * (1 - np.eye(len(counts), dtype=counts.dtype))
    order = np.argsort(-off, axis=None, kind="stable")[:pairs]
    return [divmod(int(i), len(counts)) for i in order if off.flat[i] > 0]


def mistakes(model: nn.Module, test: ImageSet, actual: int, predicted: int, device: torch.device) -> torch.Tensor:
    """Indices of up to PAIR_EXAMPLES test images of class `actual` that `model` predicts as
    `predicted`, in test order: predicted EXAMPLE_BATCH images at a time until enough are found,
    a batch or two instead of the whole test set."""
    candidates = torch.nonzero(test.labels == actual).flatten()
    found = [candidates[:0]]
    for start in range(0, len(candidates), EXAMPLE_BATCH):
        batch = candidates[start : start + EXAMPLE_BATCH]
        found.append(batch[predict(model, gather(test.images, batch), device) == predicted])
        if sum(map(len, found)) >= PAIR_EXAMPLES:
            break
    return torch.cat(found)[:PAIR_EXAMPLES]


def confused_pairs(model: nn.Module, test: ImageSet, counts: dict[str, np.ndarray], path: Path,
                   device: torch.device) -> None:
    """A row per pair of top_confusions of the pretrained classifier (`model`; `counts`: its
    confusion matrix and scratch's): its count and scratch's, then test images it got wrong that way."""
    ours, theirs = counts["pretrained"], counts["scratch"]
    pairs = top_confusions(ours, PAIRS)
    cells: Cells = [[None] * PAIR_EXAMPLES]  # an empty row when there is no mistake at all
    labels = [""]
    if pairs:
        cells = [list(gather(test.images, mistakes(model, test, a, b, device))) for a, b in pairs]
        labels = [f"{test.classes[a]}\n-> {test.classes[b]}\n{ours[a, b]} (scratch {theirs[a, b]})" for a, b in pairs]
    title = "Most confused pairs (true -> predicted),\npretrained classifier" if pairs else \
        "The pretrained classifier got\nevery test image right"
    draw_grid(cells, test.shape[1:], labels, [], title, path)

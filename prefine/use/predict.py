"""Batch inference: a classifier's predictions, or an encoder's embeddings, for every input
image, streamed to one parquet file (written beside, renamed when complete).

Columns, one row per input in input order (sources as given, folders sorted, manifests by row):
  predict: path, predicted (class name), confidence (its softmax probability), top_k (class
           names, best first), top_k_scores (their probabilities), error
  embed:   path, embedding (list<float32> of the encoder's dimension), error
A row whose image could not be read holds only its path and its error (the rest is null).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from prefine.atomic import atomic_path
from prefine.errors import PrefineError
from prefine.evaluate.probe import batch_size_for
from prefine.evaluate.probe import embed as forward
from prefine.models import weights
from prefine.models.nets import EncoderSpec
from prefine.training import device as devices
from prefine.use import inputs

ROW_GROUP = 8192  # rows per parquet row group: pending rows cost memory (about 3 KiB each in RSS)
PREDICTIONS = pa.schema([
    ("path", pa.string()), ("predicted", pa.string()), ("confidence", pa.float32()),
    ("top_k", pa.list_(pa.string())), ("top_k_scores", pa.list_(pa.float32())), ("error", pa.string()),
])
EMBEDDINGS = pa.schema([("path", pa.string()), ("embedding", pa.list_(pa.float32())), ("error", pa.string())])
Progress = Callable[[int, int], None]  # (inputs done, inputs in all), after each batch
Columns = Callable[[torch.Tensor], dict[str, list]]  # a batch's outputs -> values of its decoded rows


@dataclass(frozen=True)
class Summary:
    """How many inputs got a result, and how many could not be read."""

    ok: int
    failed: int


def predict(model_file: Path, sources: list[Path], out: Path, top_k: int = 3, batch_size: int | None = None,
            progress: Progress | None = None) -> Summary:
    """Classify every input with the classifier in `model_file`; write `out` (PREDICTIONS)."""
    model, meta = _load(weights.load_classifier, model_file, "a classifier")
    columns = partial(_prediction_columns, classes=meta["classes"], k=min(top_k, len(meta["classes"])))
    return _run(model, meta["spec"], sources, out, batch_size, PREDICTIONS, columns, progress)


def embed(model_file: Path, sources: list[Path], out: Path, batch_size: int | None = None,
          progress: Progress | None = None) -> Summary:
    """Embed every input with the encoder in `model_file`; write `out` (EMBEDDINGS)."""
    encoder, meta = _load(weights.load_encoder, model_file, "an encoder")
    return _run(encoder, meta["spec"], sources, out, batch_size, EMBEDDINGS, _embedding_columns, progress)


def _load(loader: Callable[[Path], tuple[nn.Module, dict]], file: Path, kind: str) -> tuple[nn.Module, dict]:
    """The network in `file`; the other kind of weights file is named as such, not a KeyError."""
    try:
        return loader(file)
    except (KeyError, RuntimeError):  # a classifier's meta has "classes"; its state, a head
        raise PrefineError(f"{file}: not {kind}'s weights") from None


def _run(net: nn.Module, spec: EncoderSpec, sources: list[Path], out: Path, batch_size: int | None,
         schema: pa.Schema, columns: Columns, progress: Progress | None) -> Summary:
    """Stream the inputs through `net` on the GPU when there is one, and the rows to parquet;
    `batch_size` None: as many images as probe.batch_size_for their size on the device."""
    device = devices.pick()
    batch_size = batch_size or batch_size_for((spec["image_size"], spec["image_size"]), device)
    total = inputs.count(sources, spec)
    net.to(device)
    done = failed = 0
    with atomic_path(Path(out)) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        groups = _RowGroups(writer)
        for batch in inputs.batches(sources, spec, batch_size):
            values = columns(forward(net, batch.images, device, batch_size)) if len(batch.images) else {}
            groups.add(_table(batch, values, schema))
            done, failed = done + len(batch.paths), failed + batch.failed
            if progress:
                progress(done, total)
        groups.flush()
    return Summary(done - failed, failed)


def _prediction_columns(logits: torch.Tensor, classes: list[str], k: int) -> dict[str, list]:
    """Class, confidence and top k per image; the class is logits' argmax, as evaluate's."""
    probs = logits.softmax(dim=1)
    predicted = logits.argmax(dim=1)
    top_scores, top = probs.topk(k, dim=1)
    return {
        "predicted": [classes[i] for i in predicted.tolist()],
        "confidence": probs.gather(1, predicted[:, None]).squeeze(1).tolist(),
        "top_k": [[classes[i] for i in row] for row in top.tolist()],
        "top_k_scores": top_scores.tolist(),
    }


def _embedding_columns(embeddings: torch.Tensor) -> dict[str, list]:
    """One list<float32> per image: a single column whatever the encoder's dimension."""
    return {"embedding": list(embeddings.numpy())}


def _table(batch: inputs.Batch, values: dict[str, list], schema: pa.Schema) -> pa.Table:
    """The batch's rows: decoded inputs take `values` in order, failed ones nulls and the error."""
    ok = [i for i, error in enumerate(batch.errors) if error is None]
    data: dict[str, list] = {"path": batch.paths}
    for name in schema.names[1:-1]:
        column = [None] * len(batch.paths)
        for i, value in zip(ok, values.get(name, []), strict=True):
            column[i] = value
        data[name] = column
    data["error"] = batch.errors
    return pa.table(data, schema=schema)


class _RowGroups:
    """Batches gathered into row groups of about ROW_GROUP rows: a group per batch would make the
    parquet footer, which the writer holds until it closes, grow by a group every batch."""

    def __init__(self, writer: pq.ParquetWriter) -> None:
        self.writer, self.pending, self.rows = writer, [], 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += len(table)
        if self.rows >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=ROW_GROUP)
        self.pending, self.rows = [], 0

"""Calibration inputs from any data source (:mod:`neurodeploy.datasets`) with bounded memory.

The layer-wise search (:mod:`neurodeploy.calibration`) evaluates the whole network on its inputs for
every layer, so it runs on a deterministic subsample, not on every sample of a dataset that does not
fit in memory: all ``N`` samples when they hold at most ``max_values`` numbers (``datasets.
CALIBRATION_VALUES``, 2^25) and are at most ``max_samples`` (default :data:`MAX_SAMPLES`), else ``k`` evenly spaced ones, sample
``i·N // k`` for ``i < k``. Indices count samples across the whole source, so one ``.npz`` and the
same data in shards, a glob or an ``.npy`` give the same inputs, the same digest and the same
calibration record. Only the chosen samples (and one file of a shard folder) are in memory.

What the quantisers read of the inputs' values (peak, sign, dyadic bits: :class:`~neurodeploy.
calibration.InputStatistics`) comes from every sample, not the subsample: the same pass that picks
the samples computes the statistics of each batch and merges them (exactly: max / min / or of the
sign / max of the dyadic bits), and the subsample carries them to the quantisers.

That pass is one task per batch (:func:`~neurodeploy.distributed.run_shards`): in this process, or
with a ``Runner`` (``calibrate --workers N`` / ``--ray-address``) on Ray workers, each reading and
decoding its own batch and returning its statistics and picked rows; they fold in batch order, so
the subsample, its digest and the statistics, hence the record, are the same either way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from . import datasets
from .calibration import InputStatistics, with_statistics
from .distributed import Runner, run_shards


@dataclass
class CalibrationSample:
    x: np.ndarray            # [k, *input_shape] float64
    total: int               # samples in the source
    digest: str              # sha256 of the sampled inputs (layout independent)
    statistics: InputStatistics | None = None  # of every sample of the source, merged across batches

    def describe(self) -> str:
        k = len(self.x)
        return (f"all {k} samples" if k == self.total else
                f"{k} evenly spaced of {self.total} samples (sample i*{self.total}//{k}, i < {k})")

    def record_fields(self) -> dict:
        fields = {"data_total_samples": self.total, "data_sampling": self.describe()}
        if self.statistics is not None:
            fields["input_statistics"] = self.statistics.record_fields()
        return fields


# the search keeps every layer's values for all its samples (float64, float and quantised): 4096
# digits-sized samples peak at ~1.2 GB, so more samples would make memory grow with the dataset
MAX_SAMPLES = 4096
# values per batch of the statistics pass (one batch in memory: 32 MB of float64)
STREAM_VALUES = 1 << 22


def sample_size(total: int, per_sample: int, max_values: int, max_samples: int | None) -> int:
    k = min(total, max(1, max_values // max(per_sample, 1)))
    return max(1, min(k, int(MAX_SAMPLES if max_samples is None else max_samples)))


def sample_indices(total: int, k: int) -> np.ndarray:
    return (np.arange(k, dtype=np.int64) * total) // k


def inputs_digest(x: np.ndarray, total: int) -> str:
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float64)).reshape(len(x), -1)  # however the model reshapes
    h = hashlib.sha256(f"calibration-sample|{total}|{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def sample_calibration(data, input_shape=None, *, max_samples: int | None = None,
                       max_values: int = datasets.CALIBRATION_VALUES, statistics: bool = True,
                       runner: Runner | None = None) -> CalibrationSample:
    """The calibration subsample of ``data`` (a path, folder or glob: see the module docstring), with
    the input statistics of all of it (``statistics=False``: only the subsample is read, for its digest).
    ``runner`` (:class:`~neurodeploy.distributed.Runner`): the pass over the batches runs on Ray
    workers; the result is the same."""
    image_size = int(input_shape[-1]) if input_shape and len(input_shape) == 3 else 224
    source = datasets.open_source(data, image_size=image_size)
    total = source.n_samples
    per_sample = int(np.prod(source.shards(1, 1)[0].read(input_shape).x.shape[1:]))
    k = sample_size(total, per_sample, max_values, max_samples)
    picks = sample_indices(total, k) if k < total else None
    if statistics or picks is None:
        x, stats = _stream(source, input_shape, picks, per_sample, runner)
    else:
        specs = source.shards(1)
        x, stats = np.concatenate([specs[int(i)].read(input_shape).x for i in picks]), None
    if stats is not None:
        x = with_statistics(x, stats)
    return CalibrationSample(x, total, inputs_digest(x, total), stats)


def _stream(source: datasets.DataSource, input_shape, picks: np.ndarray | None, per_sample: int,
            runner: Runner | None = None):
    """(the picked samples, or all when ``picks`` is None; the statistics of every sample) in one
    pass over the source's batches: one task per batch, in this process or on Ray workers, folded in
    batch order, so the samples, their digest and the (exactly merged) statistics do not depend on it."""
    batch = max(1, min(datasets.DEFAULT_BATCH * 16, STREAM_VALUES // max(per_sample, 1)))
    parts, stats = run_shards(_batch_task, (input_shape, picks), source.shards(batch), _fold_batch, runner=runner)
    return np.concatenate(parts), stats


def _batch_task(program, shard: datasets.ShardSpec):
    """One batch read (an image batch is decoded here, on the worker): its statistics and its picked rows."""
    input_shape, picks = program
    x = shard.read(input_shape).x
    if picks is None:
        return InputStatistics.of(x), x
    local = picks[(picks >= shard.offset) & (picks < shard.offset + len(x))] - shard.offset
    return InputStatistics.of(x), x[local]


def _fold_batch(acc, result, _shard):
    stats, rows = result
    if acc is None:
        return [rows], stats
    parts, merged = acc
    if len(rows):
        parts.append(rows)
    return parts, merged.merge(stats)

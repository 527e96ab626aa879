"""NVIDIA DALI reader for binary datasets (``pip install .[dali]``): the same batches as BinaryDataset.

The batch order is BinaryDataset's own (train_segments / eval_segments), so this reader and
the memmap reader give identical batches for every rank and world size. DALI has no reader
for headerless raw files (fn.readers.numpy needs .npy headers), so the rows are fed through
``fn.external_source`` from the same memory maps; what DALI adds is its prefetch queue and,
on a GPU, the host-to-device copy inside the pipeline (outputs are moved with ``.gpu()``
and copied out with feed_ndarray on the current stream).

    reader = DaliBatchReader(dataset, dataset.train_segments(B, rank, W, ...), device="cuda")
    for batch in reader: ...

Tested on CPU-only pipelines (device_id=None) with DALI 2.4; the GPU path follows DALI's
documented API but has not been run here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from pipeline.batch import Batch
from pipeline.dataset import BinaryDataset, batch_from_rows

try:  # optional: the [dali] extra
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    DALI_AVAILABLE = True
except ImportError:
    DALI_AVAILABLE = False


def _require_dali() -> None:
    if not DALI_AVAILABLE:
        raise ImportError(
            "DaliBatchReader needs NVIDIA DALI: pip install nvidia-dali-cuda120 (the [dali] extra)"
        )


class DaliBatchReader:
    """Iterate Batches for the row slices in ``segments`` through a DALI pipeline.

    ``device`` "cpu" runs a CPU-only pipeline; "cuda" / "cuda:N" puts the outputs on that GPU.
    ``max_batch_size`` defaults to the first batch's size (later batches may be smaller,
    e.g. the last eval batch, never larger).
    """

    def __init__(
        self,
        dataset: BinaryDataset,
        segments: Iterable[list[tuple[int, int]]],
        device: str | torch.device = "cpu",
        num_threads: int = 2,
        prefetch_queue_depth: int = 2,
        max_batch_size: int | None = None,
    ):
        _require_dali()
        self.dataset = dataset
        self.device = torch.device(device)
        self._segments = iter(segments)
        self._first = next(self._segments, None)
        if max_batch_size is None:
            max_batch_size = sum(b - a for a, b in self._first) if self._first else 1
        self._exhausted = self._first is None
        device_id = None
        if self.device.type == "cuda":
            device_id = (
                self.device.index if self.device.index is not None else torch.cuda.current_device()
            )
            self.device = torch.device("cuda", device_id)
        on_gpu = device_id is not None

        @pipeline_def(
            batch_size=max_batch_size,
            num_threads=num_threads,
            device_id=device_id,
            prefetch_queue_depth=prefetch_queue_depth,
            exec_dynamic=True,
        )
        def rows_pipeline():
            dense, sparse, labels = fn.external_source(
                source=self._next_arrays, num_outputs=3, batch=True, no_copy=False
            )
            if on_gpu:
                return dense.gpu(), sparse.gpu(), labels.gpu()
            return dense, sparse, labels

        self._pipeline = rows_pipeline()
        self._pipeline.build()

    def _next_arrays(self):
        """external_source callback: one batch as three numpy arrays whose first dimension is the batch."""
        if self._first is not None:
            segments, self._first = self._first, None
        else:
            segments = next(self._segments, None)
        if segments is None:
            raise StopIteration  # DALI ends the epoch when the source raises StopIteration
        return list(self.dataset.read_arrays(segments))

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._exhausted:
            raise StopIteration
        try:
            outputs = self._pipeline.run()
        except StopIteration:
            self._exhausted = True
            raise
        dense, sparse, labels = (self._to_torch(out) for out in outputs)
        return batch_from_rows(dense, sparse, labels, self.dataset.feature_names)

    def _to_torch(self, tensor_list) -> torch.Tensor:
        # DALI reuses its output buffers on the next run(), so the batch is copied out (on the current stream on a GPU)
        # the batch as one [b, ...] tensor (all samples have equal shapes)
        tensor = tensor_list.as_tensor()
        out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(tensor, out, cuda_stream=stream)
        return out

"""Bad values in a batch, named before they reach the model: NaN/inf dense features, labels outside [0, 1]."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from pipeline.batch import Batch, rank_slice

# where(b, key, column) names sample b of a batch: "sample 17" for synthetic data, the file, row and byte
# offset for a dataset (BinaryDataset.describe_rows)
Where = Callable[[int, str, int], str]


def sample_index(first_sample: int) -> Where:
    """where() of a batch whose samples have a global index (synthetic data): "sample <first + b>"."""
    return lambda b, key, column=0: f"sample {first_sample + b}"


def check_batch(batch: Batch, at: str, where: Where) -> Batch:
    """Raise ValueError naming `at` (e.g. "step 5"), the sample and the value for NaN/inf dense features
    or labels outside [0, 1]; else return the batch."""
    bad = ~torch.isfinite(batch.dense)
    if bool(bad.any()):  # one host sync per batch, in the prefetch thread for train batches
        b, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"{at}: dense feature {j} of {where(b, 'dense', j)} is {float(batch.dense[b, j])}"
        )
    bad = ~((batch.labels >= 0) & (batch.labels <= 1))  # NaN fails both comparisons
    if bool(bad.any()):
        b = int(bad.nonzero()[0])
        raise ValueError(
            f"{at}: label of {where(b, 'labels', 0)} is {float(batch.labels[b])}, "
            "expected a value in [0, 1]"
        )
    return batch


def checked_batches(
    batches: Iterable[Batch],
    global_batch_size: int,
    rank: int,
    world_size: int,
    first_step: int = 0,
) -> Iterator[Batch]:
    """Rank r's synthetic slices of global steps first_step + 1, ..., each checked naming its step and the
    global index of the bad sample."""
    first, _ = rank_slice(global_batch_size, rank, world_size)
    for step, batch in enumerate(batches, start=first_step + 1):
        yield check_batch(
            batch, f"step {step}", sample_index((step - 1) * global_batch_size + first)
        )

"""Samplers that ``accelerate.prepare`` shards and keeps in step across processes and resumes.

Both draw their order from a ``torch.Generator`` re-seeded with ``seed + epoch`` at the start of
every pass, so:
- every process computes the same order (accelerate also broadcasts the generator state, which it
  finds as ``batch_sampler.sampler.generator``) and ``BatchSamplerShard`` hands each its batches;
- resuming at epoch ``e`` (accelerate calls ``set_epoch``) replays exactly that epoch's order, and
  ``skip_first_batches`` then skips what was already seen;
- a plain ``DataLoader`` without accelerate still gets a new order every epoch (the epoch counter
  advances after each full pass, like accelerate's ``SeedableRandomSampler``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, Sampler


class SeededShuffle(Sampler[int]):
    """A random permutation of ``range(n)``, a new one per epoch, identical on every process."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0
        self.generator = torch.Generator().manual_seed(seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        self.generator.manual_seed(self.seed + self.epoch)
        yield from torch.randperm(self.n, generator=self.generator).tolist()
        self.epoch += 1


class LengthGroupedBatchSampler(BatchSampler):
    """Batches of similar length: less padding, same randomness as a shuffle.

    Rows are shuffled (``shuffle``) or taken in order, cut into mega-batches of ``mega_batch``
    batches, sorted by length inside each mega-batch, and cut into batches; the batch order is then
    shuffled too. The batch holding the longest row goes first, so an out-of-memory shows on step 1.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, mega_batch: int = 50):
        self.lengths = list(lengths)
        self.batch_size, self.drop_last, self.shuffle, self.mega_batch = batch_size, drop_last, shuffle, mega_batch
        # accelerate looks for `.sampler.generator` to synchronise and for `.sampler.set_epoch`
        self.sampler = SeededShuffle(len(self.lengths), seed) if shuffle else range(len(self.lengths))

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)  # a shuffle also advances the epoch counter
        size = self.mega_batch * self.batch_size
        batches = []
        for start in range(0, len(order), size):
            mega = sorted(order[start:start + size], key=lambda i: -self.lengths[i])
            batches += [mega[i:i + self.batch_size] for i in range(0, len(mega), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            # the short batch is the last one of the last mega-batch
            batches.pop()
        if not batches:
            return
        if self.shuffle:
            # the generator is in a state set by this epoch's seed: same order on every process
            perm = torch.randperm(len(batches), generator=self.sampler.generator).tolist()
            batches = [batches[i] for i in perm]
        longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
        batches.insert(0, batches.pop(longest))
        yield from batches

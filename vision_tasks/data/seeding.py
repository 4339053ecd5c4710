"""Reproducible data order and augmentation: everything random in an epoch follows from the run seed and the epoch.

albumentations 2.0.8 draws from the generators of its ``Compose`` (``Compose(seed=None)``: fresh OS entropy), not
from the global ones that ``pl.seed_everything`` seeds, and it does not reseed them in DataLoader workers (later
releases do): forked workers inherit one generator and draw the same augmentations, and no two runs agree. Here

- :class:`EpochShuffle` shuffles with a generator seeded from ``(run seed, epoch)`` in ``set_epoch``, which
  Lightning's fit loop calls on every sampler at the start of every epoch, and seeds the DataLoader's generator
  from the same pair, so torch's per-epoch worker base seed follows from it too;
- :func:`seed_worker`, the loaders' ``worker_init_fn``, runs Lightning's :func:`pl_worker_init_function` (torch,
  numpy and ``random`` of the worker from torch's per-worker seed, the worker id and the rank) and then seeds the
  dataset's albumentations pipelines from the worker's torch seed;
- :class:`SeededDataLoader` seeds the pipelines in the main process too (``num_workers=0``), from the same generator.

So epoch k's order and augmentations do not depend on how many epochs ran in this process (a resumed run repeats
them), and with ``num_workers=N`` each worker draws its own. The run's other randomness (dropout) is reseeded per
epoch by :class:`vision_tasks.callbacks.EpochSeed`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, RandomSampler, get_worker_info

__all__ = ["EpochShuffle", "SeededDataLoader", "derive_seed", "seed_augmentations", "seed_worker"]


def derive_seed(*key: int) -> int:
    """A 64-bit seed of ``key`` (e.g. ``(run seed, epoch)``), well mixed: nearby keys give unrelated streams."""
    return int(np.random.SeedSequence([int(k) % 2**64 for k in key]).generate_state(1, np.uint64)[0])


def seed_augmentations(dataset: Any, seed: int) -> None:
    """Seed every albumentations pipeline of ``dataset`` (its ``transform``, through Subset/ConcatDataset wrappers)
    with ``seed``, by albumentations' own ``Compose.set_random_seed`` (which seeds each transform's generators)."""
    seen: set[int] = set()
    todo = [dataset]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        transform = getattr(node, "transform", None)
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(int(seed) % 2**32)  # within 32 bits: every numpy seeding API takes that
        todo.append(getattr(node, "dataset", None))
        todo.extend(getattr(node, "datasets", None) or ())


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: Lightning's worker seeding, then the albumentations pipelines from the worker's torch seed.

    torch gives worker ``i`` the seed ``base + i`` (``base`` drawn per iterator from the loader's generator);
    Lightning's function mixes in the rank, so workers of different DDP processes differ too.
    """
    pl_worker_init_function(worker_id)
    info = get_worker_info()
    seed_augmentations(info.dataset, torch.initial_seed())


class EpochShuffle(RandomSampler):
    """A random permutation per epoch, from ``(seed, epoch)``: ``set_epoch(k)`` reseeds :attr:`generator`, and
    :attr:`loader_generator`, the DataLoader's (its workers' base seed and :class:`SeededDataLoader`'s draw). Two
    generators, because the DataLoader draws from its own at ``iter()``, which may come before or after
    ``set_epoch``, and the permutation is drawn lazily at the first batch: they must not share a stream.

    torch's plain shuffle draws from the global generator, whose state at epoch k depends on everything that ran
    before it in the process; a resumed run would see other orders. ``seed`` defaults to ``torch.initial_seed()``,
    the run seed after ``pl.seed_everything``. ``epoch`` is the epoch the loader starts in: Lightning's fit loop
    calls ``iter()`` on the loader of a process's first epoch before ``set_epoch`` (and the DataLoader draws its
    workers' seeds then), so a resumed run must make its sampler at the epoch it resumes.
    """

    def __init__(self, data_source: Dataset, seed: int | None = None, epoch: int = 0) -> None:
        super().__init__(data_source, generator=torch.Generator())
        self.seed = torch.initial_seed() if seed is None else int(seed)
        self.loader_generator = torch.Generator()
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator.manual_seed(derive_seed(self.seed, self.epoch, 0))
        self.loader_generator.manual_seed(derive_seed(self.seed, self.epoch, 1))


class SeededDataLoader(DataLoader):
    """A DataLoader whose main process seeds the dataset's albumentations pipelines at every ``iter()``.

    With workers, :func:`seed_worker` seeds them in each worker; with ``num_workers=0`` the pipelines run here and
    take a seed drawn from the loader's generator (as torch draws its workers' base seed), so with an
    :class:`EpochShuffle` sharing that generator each epoch's augmentations follow from ``(seed, epoch)``.
    """

    def __iter__(self):
        if self.num_workers == 0:
            seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
            seed_augmentations(self.dataset, seed)
        return super().__iter__()

"""What every data module of this package shares: train/val datasets to DataLoaders, generated data.

Hyperparameters: each public data module records its own constructor arguments, as the caller gave
them, with ``self.save_hyperparameters({...})``; the bases here record nothing. A checkpoint's
``datamodule_hyper_parameters`` therefore rebuild the module: ``type(dm)(**dm.hparams)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ..seeding import EpochShuffle, SeededDataLoader, seed_worker
from ..synthetic.cache import MANIFEST_NAME, synthetic_root
from ..verify import BAD_IMAGES, verify_images

__all__ = ["GeneratedData", "SplitDataModule"]


class SplitDataModule(pl.LightningDataModule):
    """Base of the data modules: ``setup`` fills ``train_dataset`` / ``val_dataset``; this serves them.

    Training shuffles and drops the last incomplete batch (when there is more than one batch); its order and
    augmentations follow from the run seed (``torch.initial_seed()`` when the loader is made, which
    ``pl.seed_everything`` sets) and the epoch, each DataLoader worker drawing its own (:mod:`..seeding`);
    ``test`` and ``predict`` use the val split. Every image is decoded once before training (``verify_images``,
    cached per file: :mod:`..verify`); a bad one stops the run naming it, or with ``bad_images="skip"`` is
    left out and listed. Subclasses set ``collate_fn`` when samples need
    more than default stacking (detection targets of varying length), and ``eval_collate_fn`` when
    the evaluation loaders batch otherwise (segmentation: images of different sizes, as lists).
    """

    collate_fn: Callable[[list[Any]], Any] | None = None
    eval_collate_fn: Callable[[list[Any]], Any] | None = None  # None: collate_fn

    def __init__(
        self, *, batch_size: int, num_workers: int, verify_images: bool = True, bad_images: str = "stop"
    ) -> None:
        super().__init__()
        if bad_images not in BAD_IMAGES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGES}, got {bad_images!r}")
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.verify_images, self.bad_images = bool(verify_images), bad_images
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self._resume_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the data: the epoch the training loader resumes in (see :meth:`_loader`)."""
        if self.trainer is None:
            return {}
        return {"epoch": self.trainer.fit_loop.epoch_progress.current.processed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_epoch = int(state_dict.get("epoch", 0))

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_dataset, "fit")
        return self._loader(dataset, shuffle=True, drop_last=len(dataset) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_dataset, "validate"), evaluation=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_dataset, "test"), evaluation=True)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_dataset, "predict"), evaluation=True)

    def _usable(self, paths: Sequence[Path], what: str,
                expected_sizes: Sequence[tuple[int, int]] | None = None) -> list[bool]:
        """Which of the images ``paths`` can be used (:func:`~vision_tasks.data.verify.verify_images`).

        All, without checking, when ``verify_images`` is off; with ``bad_images="stop"`` a bad image raises
        :class:`~vision_tasks.data.errors.DataError` naming it, with ``"skip"`` it is reported and left out.
        """
        if not self.verify_images:
            return [True] * len(paths)
        return verify_images(paths, bad_images=self.bad_images, expected_sizes=expected_sizes, what=what)

    def _require(self, dataset: Dataset | None, stage: str) -> Dataset:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup({stage!r}) before asking for its dataloader")
        return dataset

    def _loader(self, dataset: Dataset, *, shuffle: bool = False, drop_last: bool = False,
                evaluation: bool = False) -> DataLoader:
        collate_fn = type(self).collate_fn
        if evaluation and type(self).eval_collate_fn is not None:
            collate_fn = type(self).eval_collate_fn
        common = dict(batch_size=self.batch_size, drop_last=drop_last, num_workers=self.num_workers,
                      collate_fn=collate_fn, pin_memory=torch.cuda.is_available())
        if not shuffle:
            return DataLoader(dataset, persistent_workers=self.num_workers > 0, **common)
        # The epoch the loader starts in. Lightning gives set_epoch the fit loop's count of processed epochs, but a
        # resumed run may ask for the loader, and iterate it (which starts the workers and draws their seeds),
        # before its loops are restored (the scheduler's estimated_stepping_batches): the checkpoint's epoch comes
        # through load_state_dict, which Lightning calls first.
        epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
        epoch = max(epoch, self._resume_epoch)
        sampler = EpochShuffle(dataset, epoch=epoch)
        # Workers are started anew each epoch (persistent_workers=False), so that torch gives them seeds drawn
        # from the epoch's generator: a persistent worker would carry its augmentation stream from one epoch into
        # the next, and a resumed run could not repeat it.
        return SeededDataLoader(dataset, sampler=sampler, generator=sampler.loader_generator, worker_init_fn=seed_worker,
                                persistent_workers=False, **common)


class GeneratedData:
    """Mixin of the synthetic data modules: the set is generated once, in ``prepare_data``.

    Lightning runs ``prepare_data`` on one process per node; ``setup`` generates too for callers
    that skip it. A subclass names its generator function (``generate``, e.g.
    ``staticmethod(generate_classification)``) and its task (``synthetic_task``, the name
    :func:`~vision_tasks.data.synthetic.cache.synthetic_root` knows it by), fills
    ``generation_params`` and passes :meth:`_synthetic_root` to its reader's constructor; later runs
    reuse the cached set.

    The cache folder is this machine's: a subclass records ``root=None`` in its hyperparameters when
    it uses it (the folder is resolved again wherever they are loaded), and the ``root`` it was given
    otherwise.
    """

    synthetic_task: str = ""
    generate: Callable[..., Path]
    generation_params: dict[str, Any]
    root: Path

    def _synthetic_root(self, root: str | None) -> str:
        """``root``, or the cache folder named after the generation parameters (:func:`synthetic_root`)."""
        return str(synthetic_root(self.synthetic_task, **self.generation_params)) if root is None else root

    def prepare_data(self) -> None:
        """Generate the dataset unless ``root`` already holds it."""
        self.generate(self.root, **self.generation_params)

    def setup(self, stage: str | None = None) -> None:
        if not (Path(self.root) / MANIFEST_NAME).is_file():  # callers that skip prepare_data()
            self.prepare_data()
        super().setup(stage)  # type: ignore[misc]  # the reader's setup, next in the MRO

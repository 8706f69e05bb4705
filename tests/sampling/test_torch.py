"""medmask_store.torch: MONAI-style items, image/label alignment, DataLoader workers under fork and spawn.

Runs when PyTorch is importable (it is not in the test extra; the worker-process behaviour is also
proven without it by the sampler's spawn-pool tests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medmask_store import MaskArchive, concurrency  # noqa: E402
from medmask_store.phantom import make_phantom  # noqa: E402
from medmask_store.sampling import PatchSampler  # noqa: E402
from medmask_store.torch import PatchDataset, PatchStream  # noqa: E402

SHAPE = (64, 56, 40)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("torch") / "cases.h5"  # HDF5: the backend that could not be pickled before
    with MaskArchive(path, "w") as archive:
        for seed, case_id in enumerate(("ct01", "ct02")):
            masks, space = make_phantom(shape=SHAPE, n_organs=5, seed=seed)
            archive.add_case(case_id, masks, space=space)
    return path


def images_of(archive: MaskArchive) -> dict[str, np.ndarray]:
    """An 'image' per case whose voxels equal the labels: image and label patches must then agree."""
    return {case_id: archive[case_id].read_labels().astype(np.float32) for case_id in archive.case_ids()}


def test_items_are_monai_style_and_images_align_with_labels(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        dataset = PatchDataset(PatchSampler(archive, 48, foreground_fraction=0.5), 6, seed=1, images=images_of(archive))
        for index in range(len(dataset)):
            item = dataset[index]
            assert item["label"].shape == (1, 48, 48, 48) and item["label"].dtype == torch.int16
            assert item["image"].shape == (1, 48, 48, 48)
            inside = item["label"] != -1
            assert torch.equal(item["image"][inside], item["label"][inside].float())
            assert torch.equal(item["image"][~inside], torch.zeros(int((~inside).sum())))
            assert item["affine"].shape == (4, 4) and item["box"].shape == (3, 2)
        assert torch.equal(dataset[3]["label"], dataset[3]["label"])  # item i is one patch, whenever drawn


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_under_fork_and_spawn(stored: Path, context: str) -> None:
    with MaskArchive(stored) as archive:
        dataset = PatchDataset(PatchSampler(archive, 16, organs=["liver", "rib_right_12"]), 8, seed=3)
        expected = [dataset[i]["label"] for i in range(8)]
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context=context)
        batches = list(loader)
    assert len(batches) == 4 and batches[0]["label"].shape == (2, 2, 16, 16, 16)
    assert torch.equal(torch.cat([b["label"] for b in batches]), torch.stack(expected))
    assert all(isinstance(case_id, str) for b in batches for case_id in b["case_id"])


def test_streams_differ_between_workers(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        stream = PatchStream(PatchSampler(archive, 16))
        loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, multiprocessing_context="spawn")
        first, second = [batch for batch, _ in zip(loader, range(2))]  # one batch from each worker
    assert not torch.equal(first["box"], second["box"])


class ThreadsSeen(PatchDataset):
    """Items that also say how many threads reads take in the process drawing them."""

    def __getitem__(self, index: int) -> dict:
        return {**super().__getitem__(index), "threads": concurrency.worker_threads()}


def test_reads_take_one_thread_in_dataloader_workers(stored: Path) -> None:
    threads = concurrency.worker_threads()
    with MaskArchive(stored) as archive:
        dataset = ThreadsSeen(PatchSampler(archive, 16), 4)
        assert dataset[0]["threads"] == threads  # outside a worker: unchanged
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context="fork")
        seen = torch.cat([batch["threads"] for batch in loader])
    assert seen.tolist() == [1, 1, 1, 1]  # the worker processes fill the cores
    assert concurrency.worker_threads() == threads

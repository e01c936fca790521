"""The streaming loader: batch order from (seed, epoch) only, resume at an exact batch, workers
that change nothing but speed, and a training state saved mid-epoch that resumes bit for bit."""

import pandas as pd
import pytest
import torch

from prefine.data import store
from prefine.data.loader import EpochSampler, make_loader
from prefine.models.nets import encoder_spec
from prefine.models.objectives import build_objective
from prefine.params import PretrainParams
from prefine.training.loop import Run, fit

N = 50


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> store.ImageSet:
    """50 random 16x16 images on disk, in 4 shards."""
    images = torch.randint(0, 256, (N, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    shas = store.content_hashes(images.numpy())
    folder = tmp_path_factory.mktemp("loader") / "split"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "SHARD_BYTES", 4000)
        store.write_split(folder, store.ImageSet(images, torch.arange(N), ["x"]), pd.DataFrame({"sha256": shas}))
    return store.open_split(folder)


def batches(sampler: EpochSampler, epoch: int, start: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch, start)
    return [b.tolist() for b in sampler]


def test_an_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    sampler = EpochSampler(N, 8, seed=3, drop_last=True)
    first = batches(sampler, 0)
    assert len(first) == 6 and all(len(b) == 8 for b in first)
    assert len({row for b in first for row in b}) == 48
    assert batches(EpochSampler(N, 8, seed=3, drop_last=True), 0) == first
    assert batches(sampler, 1) != first and batches(EpochSampler(N, 8, seed=4, drop_last=True), 0) != first
    assert sum(map(len, batches(EpochSampler(N, 8, seed=3, drop_last=False), 0))) == N


def test_starting_at_batch_k_yields_exactly_the_rest_of_the_epoch():
    sampler = EpochSampler(N, 8, seed=0, drop_last=True)
    assert batches(sampler, 2, start=4) == batches(sampler, 2)[4:]
    sampler.set_epoch(2, 4)
    assert len(sampler) == 2


def test_workers_read_the_same_batches_as_the_trainer(split):
    def read(workers: int) -> list[torch.Tensor]:
        sampler = EpochSampler(N, 8, seed=1, drop_last=False)
        loader = make_loader(split, sampler, workers, pin=False)
        return [torch.cat([images.flatten(1).long(), labels[:, None]], 1) for images, labels in loader]

    state = torch.get_rng_state()
    alone, two = read(0), read(2)
    assert len(alone) == 7 and all(torch.equal(a, b) for a, b in zip(alone, two, strict=True))
    assert torch.equal(torch.get_rng_state(), state)  # the loader leaves the global RNG alone


class _WorkerSeed:
    """Data whose every batch is the torch seed of the process that read it."""

    def __len__(self) -> int:
        return 8

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.tensor([torch.initial_seed()]),)


def test_worker_seeds_come_from_the_run_seed():
    def seeds(seed: int) -> list[int]:
        loader = make_loader(_WorkerSeed(), EpochSampler(8, 2, seed, drop_last=True), 2, pin=False)
        return [int(s) for (s,) in loader]

    torch.manual_seed(123)
    first = seeds(7)
    torch.manual_seed(456)  # the global RNG plays no part
    assert seeds(7) == first and len(set(first)) == 2 and seeds(8) != first


class Crash(Exception):
    pass


def train(split: store.ImageSet, state_file, crash_at: int | None = None, workers: int = 0):
    """Denoising on the split: 3 epochs of 6 steps, the state saved every 4 steps."""
    torch.manual_seed(0)
    model = build_objective(encoder_spec("conv", 1, 16, 4), PretrainParams(method="denoising"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    calls = []

    def step(batch, gen):
        calls.append(1)
        if len(calls) == crash_at:
            raise Crash
        return model.loss(batch[0], gen)

    run = Run(split, epochs=3, batch_size=8, seed=0, fingerprint="f", state_file=state_file, save_every=4,
              workers=workers)
    return model, fit(model, optimizer, step, run, torch.device("cpu"))


def test_a_crash_mid_epoch_resumes_at_the_saved_batch_to_the_same_weights(split, tmp_path, capsys):
    reference, ref_history = train(split, None)
    state = tmp_path / "state.pt"
    with pytest.raises(Crash):
        train(split, state, crash_at=11)  # saved after step 8: epoch 2, batch 2
    saved = torch.load(state, weights_only=True)
    assert (saved["epoch"], saved["batch"]) == (1, 2)
    resumed, history = train(split, state, workers=2)
    assert "resuming at epoch 2, batch 2 of 6 (step 8)" in capsys.readouterr().out
    assert history == ref_history
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key

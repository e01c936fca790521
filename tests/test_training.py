import pytest
import torch

from prefine.models.nets import encoder_spec
from prefine.models.objectives import build_objective
from prefine.params import PretrainParams
from prefine.training.loop import Run, fit

SPEC = encoder_spec("conv", 1, 16, 4)
IMAGES = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


class Crash(Exception):
    pass


def crash_after_epoch_1(record):
    if record["epoch"] == 1:
        raise Crash


def train(epochs: int, state_file=None, fingerprint="a", on_epoch=None):
    torch.manual_seed(0)
    model = build_objective(SPEC, PretrainParams(method="denoising", noise=0.3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = Run([IMAGES], epochs=epochs, batch_size=16, seed=0, fingerprint=fingerprint, state_file=state_file)
    history = fit(model, optimizer, lambda b, g: model.loss(b[0], g), run, torch.device("cpu"), on_epoch)
    return model, history


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    reference, ref_history = train(3)
    state = tmp_path / "state.pt"
    with pytest.raises(Crash):
        train(3, state, on_epoch=crash_after_epoch_1)
    assert torch.load(state, weights_only=True)["epoch"] == 1
    resumed, history = train(3, state)
    assert history == ref_history
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_resume_skips_finished_epochs_and_replays_history(tmp_path):
    state = tmp_path / "state.pt"
    first, history = train(2, state)
    logged = []
    torch.manual_seed(0)
    model = build_objective(SPEC, PretrainParams(method="denoising", noise=0.3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = Run([IMAGES], epochs=2, batch_size=16, seed=0, fingerprint="a", state_file=state)
    again = fit(model, optimizer, lambda b, g: model.loss(b[0], g), run, torch.device("cpu"), logged.append)
    assert again == history and logged == history
    for key, value in first.state_dict().items():
        assert torch.equal(value, model.state_dict()[key])


def test_state_of_other_params_is_not_resumed(tmp_path):
    state = tmp_path / "state.pt"
    train(2, state, fingerprint="a")
    _, history = train(2, state, fingerprint="b")
    assert [r["epoch"] for r in history] == [1, 2]
    assert torch.load(state, weights_only=True)["fingerprint"] == "b"

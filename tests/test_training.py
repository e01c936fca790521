import pytest
import torch

from prefine.data.store import ImageSet
from prefine.models.nets import encoder_spec
from prefine.models.objectives import build_objective
from prefine.params import PretrainParams
from prefine.training.loop import Run, fit

SPEC = encoder_spec("conv", 1, 16, 4)
IMAGES = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
DATA = ImageSet(IMAGES, torch.full((40,), -1), [])


class Crash(Exception):
    pass


def crash_after_epoch_1(record):
    if record["epoch"] == 1:
        raise Crash


def train(epochs: int, state_file=None, fingerprint="a", on_epoch=None):
    torch.manual_seed(0)
    model = build_objective(SPEC, PretrainParams(method="denoising", noise=0.3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = Run(DATA, epochs=epochs, batch_size=16, seed=0, fingerprint=fingerprint, state_file=state_file)
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
    run = Run(DATA, epochs=2, batch_size=16, seed=0, fingerprint="a", state_file=state)
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


def test_a_non_finite_loss_stops_training_naming_the_step(tmp_path):
    from prefine.training.loop import TrainingDiverged

    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.fill_(float("nan"))  # a broken model: the first step's loss is NaN
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = ImageSet(torch.zeros(12, 4, dtype=torch.uint8), torch.zeros(12, dtype=torch.int64), [])
    run = Run(data, epochs=1, batch_size=4, seed=0, fingerprint="x", state_file=tmp_path / "state.pt")
    with pytest.raises(TrainingDiverged, match="loss is nan at epoch 1, step 1 of 3"):
        fit(model, optimizer, lambda b, g: model(b[0].float()).mean(), run, torch.device("cpu"))
    assert not (tmp_path / "state.pt").exists()  # nothing saved from the broken epoch


def test_a_truncated_state_file_is_reported_and_training_starts_afresh(tmp_path, capsys):
    state = tmp_path / "state.pt"
    _, reference = train(2, state)
    state.write_bytes(state.read_bytes()[:100])  # a killed copy, a full disk
    _, history = train(2, state)
    assert history == reference
    assert "is unreadable" in capsys.readouterr().out

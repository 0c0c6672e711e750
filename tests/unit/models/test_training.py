"""The generic trainer: seeded determinism, exact checkpoint resumption, early stopping."""

import pytest
import torch

from atomistic.models.training import TrainingConfig, minibatches, seed_everything, train

torch.set_default_dtype(torch.float64)


def _problem(seed=0):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x).sum(1, keepdim=True)
    seed_everything(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(8, 1)
    ).double()

    def loss_fn(module, idx):
        err = module(x[idx]) - y[idx]
        return {"loss": (err**2).mean(), "mae": err.abs().mean(), "weight": torch.tensor(len(idx))}

    def make_batches(gen):
        return minibatches(48, 16, gen)

    val = [torch.arange(48, 64)]
    return net, loss_fn, make_batches, val


def _weights(net):
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_seeded_runs_are_identical(optimizer):
    cfg = TrainingConfig(
        epochs=6,
        lr=0.05 if optimizer == "adam" else 0.5,
        optimizer=optimizer,
        seed=3,
        scheduler="cosine" if optimizer == "adam" else None,
    )
    runs = []
    for _ in range(2):
        net, loss_fn, data, val = _problem()
        hist = train(net, loss_fn, data, val, cfg)
        runs.append((_weights(net), hist))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1].metrics["val_loss"] == runs[1][1].metrics["val_loss"]
    assert runs[0][1].metrics["train_loss"][-1] < runs[0][1].metrics["train_loss"][0]
    assert set(runs[0][1].metrics) >= {"train_loss", "train_mae", "val_loss", "val_mae", "lr"}


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    base = dict(lr=0.02, seed=1, scheduler="plateau", plateau_patience=1, restore_best=False)
    net, loss_fn, data, val = _problem()
    train(net, loss_fn, data, val, TrainingConfig(epochs=10, **base))
    ref = _weights(net)

    ckpt = str(tmp_path / "ckpt")
    net, loss_fn, data, val = _problem()
    h1 = train(net, loss_fn, data, val, TrainingConfig(epochs=4, checkpoint_dir=ckpt, **base))
    assert h1.epochs_completed == 4
    # A fresh process would rebuild the module from scratch: do the same here.
    net, loss_fn, data, val = _problem(seed=99)
    seen = []
    h2 = train(
        net,
        loss_fn,
        data,
        val,
        TrainingConfig(epochs=10, checkpoint_dir=ckpt, **base),
        callback=lambda e, m: seen.append(e),
    )
    assert h2.resumed_from == 4 and seen == list(range(4, 10))
    assert len(h2.metrics["train_loss"]) == 10
    assert torch.equal(_weights(net), ref)

    with pytest.raises(ValueError, match="different training configuration"):
        train(net, loss_fn, data, val, TrainingConfig(epochs=10, checkpoint_dir=ckpt, lr=0.1))


def test_early_stopping_restores_best():
    net, loss_fn, data, val = _problem()
    # A learning rate far too large makes the validation loss stop improving.
    hist = train(net, loss_fn, data, val, TrainingConfig(epochs=200, lr=1.0, patience=3))
    assert hist.stopped_early and hist.epochs_completed < 200
    assert hist.epochs_completed == hist.best_epoch + 5
    net.eval()
    with torch.no_grad():
        now = float(loss_fn(net, val[0])["loss"])
    assert now == pytest.approx(hist.best_loss, rel=1e-12)


def test_rejects_bad_config_and_nan():
    with pytest.raises(ValueError, match="optimizer"):
        TrainingConfig(optimizer="sgd")
    net, _, data, _ = _problem()
    with pytest.raises(FloatingPointError):
        train(
            net,
            lambda m, b: {"loss": torch.tensor(float("nan"))},
            data,
            config=TrainingConfig(epochs=1),
        )
    with pytest.raises(KeyError, match="'loss'"):
        train(net, lambda m, b: {"l": torch.tensor(1.0)}, data, config=TrainingConfig(epochs=1))

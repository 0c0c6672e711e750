"""The generic trainer: seeded determinism, exact checkpoint resumption, early stopping."""

import math

import pytest
import torch

from atomistic import interrupt
from atomistic.models.training import TrainingConfig, minibatches, seed_everything, train


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


RECIPES = {
    "plateau": dict(lr=0.02, seed=1, scheduler="plateau", plateau_patience=1, restore_best=False),
    # AdamW, warm-up, cosine decay and the weight EMA: every piece of state must be checkpointed
    "adamw-ema": dict(
        lr=0.02,
        seed=1,
        optimizer="adamw",
        weight_decay=1e-3,
        scheduler="cosine",
        warmup_epochs=2,
        ema_decay=0.9,
        grad_clip=1.0,
        restore_best=False,
    ),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_checkpoint_resume_matches_uninterrupted(tmp_path, recipe):
    base = RECIPES[recipe]
    net, loss_fn, data, val = _problem()
    train(net, loss_fn, data, val, TrainingConfig(epochs=10, **base))
    ref = _weights(net)

    ckpt = str(tmp_path / "ckpt")
    net, loss_fn, data, val = _problem()

    def kill(epoch, metrics):
        if epoch == 4:  # after 4 checkpointed epochs, before the fifth is saved
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(net, loss_fn, data, val, TrainingConfig(epochs=10, checkpoint_dir=ckpt, **base), kill)
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


def test_ema_weights_are_the_running_average():
    """With ema_decay the returned weights are the EMA of the live weights (closed form: the
    recursion of the decay schedule min(d, (1 + t) / (10 + t)) applied to the recorded steps)."""
    net, loss_fn, data, val = _problem()
    cfg = TrainingConfig(epochs=3, lr=0.05, seed=2, ema_decay=0.5, restore_best=False)
    live = []
    params = list(net.parameters())
    ema = torch.cat([p.detach().flatten() for p in params]).clone()
    original_step = torch.optim.Adam.step

    def recording_step(self, *a, **k):
        out = original_step(self, *a, **k)
        live.append(torch.cat([p.detach().flatten() for p in params]).clone())
        return out

    torch.optim.Adam.step = recording_step
    try:
        train(net, loss_fn, data, val, cfg)
    finally:
        torch.optim.Adam.step = original_step
    for t, w in enumerate(live, start=1):
        d = min(0.5, (1 + t) / (10 + t))
        ema = d * ema + (1 - d) * w
    assert torch.allclose(_weights(net), ema, rtol=0, atol=1e-12)


def test_warmup_and_cosine_learning_rates():
    net, loss_fn, data, val = _problem()
    cfg = TrainingConfig(epochs=4, lr=0.1, min_lr=0.01, warmup_epochs=1, scheduler="cosine")
    hist = train(net, loss_fn, data, val, cfg)
    # lr recorded at the end of each epoch: the last step's rate (3 steps per epoch)
    steps = 3
    expected = []
    for epoch in range(4):
        k = steps - 1
        p = (epoch + k / steps) / 4
        base = 0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * p))
        step = epoch * steps + k
        expected.append(base * (0.01 + 0.99 * step / steps) if step < steps else base)
    assert hist.metrics["lr"] == pytest.approx(expected, rel=1e-12)


def test_max_time_ends_the_run():
    net, loss_fn, data, val = _problem()
    hist = train(net, loss_fn, data, val, TrainingConfig(epochs=10**6, max_time=0.5, lr=1e-3))
    assert hist.stop_reason == "max_time"
    assert 0.5 <= hist.wall_time < 5.0
    assert 0 <= hist.best_epoch < hist.epochs_completed


def test_interrupt_stops_at_the_next_minibatch():
    net, loss_fn, data, val = _problem()
    seen = []

    def cb(epoch, metrics):
        seen.append(epoch)
        if epoch == 1:
            interrupt.request_stop()

    try:
        with pytest.raises(interrupt.Interrupted):
            train(net, loss_fn, data, val, TrainingConfig(epochs=50), callback=cb)
    finally:
        interrupt.clear()
    assert seen == [0, 1]


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

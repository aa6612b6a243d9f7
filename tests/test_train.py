"""The ELBO loop: loss definition, warm-up, callbacks, seeds, divergence handling, config validation."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayescompress.inference import Callback, EarlyStopping, NonFiniteLossError, Trainer, TrainConfig, fit
from bayescompress.nn.model import bayesian_layers
from bayescompress.metrics import evaluate
from bayescompress.nn import bayesianize_, kl_divergence
from bayescompress.priors import GaussianPrior


def _toy_problem(n=96, features=6, classes=3, batch=32):
    x = torch.randn(n, features)
    y = (x[:, :classes] * 2).argmax(1)
    dataset = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False), x, y


def _bnn(features=6, classes=3):
    return bayesianize_(nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes)),
                        GaussianPrior(scale=1.0))


def test_loss_is_mean_nll_plus_kl_over_training_set_size():
    loader, x, y = _toy_problem()
    model = _bnn()
    trainer = Trainer(model, loader, config=TrainConfig(epochs=1, quiet=True))
    torch.manual_seed(3)
    loss, nll, kl = trainer.loss(x[:32], y[:32])
    torch.manual_seed(3)
    model.train()
    expected_nll = F.cross_entropy(model(x[:32]), y[:32])
    assert torch.allclose(nll, expected_nll)
    assert torch.allclose(kl, kl_divergence(model))
    assert torch.allclose(loss, expected_nll + kl / 96)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_mixes_the_teachers_probabilities_into_the_targets(temperature):
    loader, x, y = _toy_problem()
    model, teacher = _bnn(), nn.Sequential(nn.Linear(6, 3))
    config = TrainConfig(epochs=1, quiet=True, distill=0.3, distill_temperature=temperature)
    trainer = Trainer(model, loader, config=config, teacher=teacher)
    torch.manual_seed(3)
    loss, nll, kl = trainer.loss(x[:32], y[:32])
    torch.manual_seed(3)
    model.train()
    logits = model(x[:32])
    log_p = F.log_softmax(logits, dim=1)
    log_p_soft = F.log_softmax(logits / temperature, dim=1)
    teacher_p = F.softmax(teacher(x[:32]) / temperature, dim=1).detach()
    # 0.7 * CE(label) + 0.3 * T^2 * CE(teacher at T), written out term by term; at T = 1 this is
    # -E_target[log p] with the target (0.7 label + 0.3 teacher)
    expected = -(0.7 * log_p.gather(1, y[:32, None]).squeeze(1)
                 + 0.3 * temperature ** 2 * (teacher_p * log_p_soft).sum(1)).mean()
    assert torch.allclose(loss, expected + kl / 96, atol=1e-6)
    # the reported NLL stays the labels' alone, comparable with an undistilled run's
    assert torch.allclose(nll, -log_p.gather(1, y[:32, None]).mean(), atol=1e-6)


@pytest.mark.parametrize("distill, teacher", [(0.3, None), (0.0, nn.Linear(6, 3))], ids=["no-teacher", "no-weight"])
def test_distillation_needs_both_a_weight_and_a_teacher(distill, teacher):
    loader, _, _ = _toy_problem()
    with pytest.raises(ValueError, match="distill > 0 needs a teacher"):
        Trainer(_bnn(), loader, config=TrainConfig(epochs=1, quiet=True, distill=distill), teacher=teacher)


def test_kl_warmup_ramps_beta_linearly_to_the_kl_weight():
    loader, _, _ = _toy_problem()
    betas = []

    class Record(Callback):
        def on_batch_end(self, trainer, batch, loss):
            betas.append(trainer.beta)

    config = TrainConfig(epochs=3, kl_warmup_epochs=2, kl_weight=0.5, quiet=True)
    fit(_bnn(), loader, config=config, callbacks=[Record()])
    steps_per_epoch = 3
    expected = [0.5 * min(1.0, (s + 1) / (2 * steps_per_epoch)) for s in range(9)]
    assert betas == pytest.approx(expected)


@pytest.mark.parametrize("schedule, expected", [
    ("constant", lambda t: 1.0),
    ("linear", lambda t: 1.0 - t),
    ("cosine", lambda t: 0.5 * (1.0 + math.cos(math.pi * t))),
])
def test_the_learning_rate_follows_its_schedule_to_the_last_step(schedule, expected):
    loader, _, _ = _toy_problem()
    rates = []

    class Record(Callback):
        def on_batch_end(self, trainer, batch, loss):  # after the step: the rate of the next one
            rates.append(trainer.optimizer.param_groups[0]["lr"])

    fit(_bnn(), loader, config=TrainConfig(epochs=3, lr=0.02, lr_schedule=schedule, quiet=True), callbacks=[Record()])
    total = 3 * 3
    assert rates == pytest.approx([0.02 * expected((s + 1) / total) for s in range(total)], abs=1e-12)


def test_callbacks_are_called_in_order_with_history():
    loader, _, _ = _toy_problem()
    events = []

    class Record(Callback):
        def on_train_begin(self, trainer):
            events.append("begin")

        def on_after_backward(self, trainer):
            assert all(p.grad is not None for p in trainer.model.parameters())
            events.append("backward")

        def on_batch_end(self, trainer, batch, loss):
            events.append(f"batch{batch}")

        def on_epoch_end(self, trainer, epoch, record):
            assert record["epoch"] == epoch + 1 and "val_accuracy" in record
            record["extra"] = 1.0
            events.append(f"epoch{epoch}")

        def on_train_end(self, trainer):
            events.append("end")

    history = fit(_bnn(), loader, loader, TrainConfig(epochs=2, eval_samples=2, quiet=True), [Record()])
    per_epoch = ["backward", "batch0", "backward", "batch1", "backward", "batch2"]
    assert events == ["begin", *per_epoch, "epoch0", *per_epoch, "epoch1", "end"]
    assert [r["extra"] for r in history] == [1.0, 1.0]


def test_training_fits_the_toy_problem():
    loader, _, _ = _toy_problem(n=1024, batch=128)
    history = fit(_bnn(), loader, config=TrainConfig(epochs=20, lr=1e-2, quiet=True))
    assert history[-1]["nll"] < 0.5 * history[0]["nll"]


def test_prior_updates_run_at_every_epoch_end():
    loader, _, _ = _toy_problem()
    model = bayesianize_(nn.Sequential(nn.Linear(6, 3)), GaussianPrior(scale=1.0, empirical_bayes=True))
    scales = []

    class Record(Callback):
        def on_epoch_end(self, trainer, epoch, record):
            scales.append(float(model[0].prior.scale))

    fit(model, loader, config=TrainConfig(epochs=2, quiet=True), callbacks=[Record()])
    layer = model[0]
    second_moment = torch.cat([(layer.weight**2 + layer.weight_sigma**2).flatten(),
                               layer.bias**2 + layer.bias_sigma**2]).mean()
    assert scales[-1] == pytest.approx(second_moment.item() ** 0.5, rel=1e-5)
    assert scales[0] != 1.0


def test_same_seed_gives_the_same_model():
    loader, _, _ = _toy_problem()
    torch.manual_seed(0)
    start = _bnn()
    a, b = copy.deepcopy(start), copy.deepcopy(start)
    fit(a, loader, config=TrainConfig(epochs=2, seed=5, quiet=True))
    fit(b, loader, config=TrainConfig(epochs=2, seed=5, quiet=True))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_deterministic_model_trains_by_maximum_likelihood():
    loader, _, _ = _toy_problem()
    model = nn.Sequential(nn.Linear(6, 3))
    history = fit(model, loader, config=TrainConfig(epochs=5, lr=1e-2, quiet=True))
    assert all(r["kl"] == 0.0 and r["loss"] == pytest.approx(r["nll"]) for r in history)


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_finite_weights():
    loader, x, y = _toy_problem()
    poisoned_x = x.clone()
    poisoned_x[40] = float("nan")  # second batch of the first epoch
    poisoned = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(poisoned_x, y), batch_size=32)
    model = _bnn()
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch 2.*the input batch holds NaN/Inf"):
        fit(model, poisoned, config=TrainConfig(epochs=2, quiet=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_non_finite_kl_names_the_layer_and_its_prior():
    loader, _, _ = _toy_problem()
    model = _bnn()
    name, layer = bayesian_layers(model)[0]
    with torch.no_grad():
        layer.weight_rho[0, 0] = float("inf")  # sigma = inf: the Gaussian KL is inf, the NLL may be too
    with pytest.raises(NonFiniteLossError, match=rf"layer '{name}' has non-finite weight_rho.*the KL of layer "
                                                 rf"'{name}' under its GaussianPrior is (inf|nan)"):
        fit(model, loader, config=TrainConfig(epochs=1, quiet=True))


def test_stop_training_ends_after_the_current_batch_and_its_epoch():
    loader, _, _ = _toy_problem()  # 3 batches per epoch
    events = []

    class Stop(Callback):
        def on_batch_end(self, trainer, batch, loss):
            events.append((trainer.epoch, batch))
            if (trainer.epoch, batch) == (1, 0):
                trainer.stop_training = True

        def on_epoch_end(self, trainer, epoch, record):
            events.append(f"epoch{epoch}")

        def on_train_end(self, trainer):
            events.append("end")

    history = fit(_bnn(), loader, config=TrainConfig(epochs=5, quiet=True), callbacks=[Stop()])
    assert events == [(0, 0), (0, 1), (0, 2), "epoch0", (1, 0), "epoch1", "end"]
    assert [r["epoch"] for r in history] == [1, 2]


def _pretrained_then_mislabelled():
    """A BNN fitted to the toy problem, and a loader of the same inputs with every label shifted by one, so
    that training on it steadily lowers the accuracy on the true labels."""
    torch.manual_seed(0)
    loader, x, y = _toy_problem(n=192, batch=32)
    model = _bnn()
    fit(model, loader, config=TrainConfig(epochs=30, lr=1e-2, quiet=True))
    wrong = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (y + 1) % 3), batch_size=32)
    return model, wrong, loader


def test_early_stopping_restores_the_last_state_within_the_accuracy_budget():
    model, wrong, val = _pretrained_then_mislabelled()
    replay = copy.deepcopy(model)
    config = TrainConfig(epochs=10, lr=1e-2, eval_samples=0, quiet=True)
    stop = EarlyStopping(val, max_drop=0.1, checks_per_epoch=2)  # 6 batches: checks after batches 2 and 5
    history = fit(model, wrong, val, config, callbacks=[stop])
    reference = stop.reference_accuracy
    assert reference > 0.9
    assert stop.stopped and len(history) < 10
    assert [s % 3 for s, _ in stop.checks[1:]] == [0] * (len(stop.checks) - 1)
    assert stop.checks[-1][1] < reference - 0.1  # the check that stopped training was over the budget
    kept_step, kept_accuracy = stop.checks[-2]
    assert kept_step == stop.kept_step > 0 and kept_accuracy >= reference - 0.1
    assert history[-1]["early_stopping/kept_step"] == kept_step

    # the restored model is exactly the state after kept_step steps of the same run without the checks
    class StopAt(Callback):
        def on_batch_end(self, trainer, batch, loss):
            trainer.stop_training = trainer.step == kept_step

    fit(replay, wrong, val, config, callbacks=[StopAt()])
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), replay.state_dict().values()))
    assert evaluate(model, val, samples=0)["accuracy"] == kept_accuracy


def test_early_stopping_with_room_to_spare_changes_nothing():
    model, wrong, val = _pretrained_then_mislabelled()
    plain = copy.deepcopy(model)
    config = TrainConfig(epochs=3, lr=3e-3, eval_samples=0, quiet=True)
    stop = EarlyStopping(val, max_drop=1.0)
    fit(model, wrong, val, config, callbacks=[stop])
    fit(plain, wrong, val, config)
    assert not stop.stopped and stop.kept_step == 3 * 6
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), plain.state_dict().values()))


@pytest.mark.parametrize("field, value", [("max_drop", -0.01), ("max_drop", 1.5), ("checks_per_epoch", 0)])
def test_early_stopping_settings_are_validated(field, value):
    settings = {"max_drop": 0.01, "checks_per_epoch": 1, field: value}
    with pytest.raises(ValueError, match=field):
        EarlyStopping([], **settings)


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("lr", 0.0), ("lr", -1e-3), ("kl_weight", 0.0), ("kl_warmup_epochs", -1),
     ("eval_samples", -2), ("weight_decay", -0.1), ("lr_schedule", "step"), ("seed", -1), ("input_gate_lr", 0.0)],
)
def test_out_of_range_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_a_list_of_batches_counts_its_examples_and_anything_else_without_a_dataset_needs_n_train():
    batches = [(torch.randn(4, 6), torch.zeros(4, dtype=torch.long)),
               (torch.randn(3, 6), torch.ones(3, dtype=torch.long))]
    assert Trainer(_bnn(), batches, config=TrainConfig(epochs=1, quiet=True)).n_train == 7
    with pytest.raises(ValueError, match="cannot train on a list_iterator, which has no length or is used up"):
        fit(_bnn(), iter(batches), config=TrainConfig(epochs=1, quiet=True))

    class Batches:  # re-iterable, but of unknown size: it could be one rank's share of a distributed loader
        def __iter__(self):
            return iter(batches)

        def __len__(self):
            return len(batches)

    with pytest.raises(ValueError, match="training-set size of a Batches without .dataset.*n_train=N"):
        fit(_bnn(), Batches(), config=TrainConfig(epochs=1, quiet=True))
    assert Trainer(_bnn(), Batches(), config=TrainConfig(epochs=1, quiet=True), n_train=7).n_train == 7


def test_each_epochs_batches_have_a_progress_bar_and_quiet_hides_both(capsys):
    from bayescompress import GaussianPrior, TrainConfig, bayesianize_, fit

    torch.manual_seed(0)
    net = bayesianize_(torch.nn.Sequential(torch.nn.Linear(4, 3)), GaussianPrior())
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(5)]
    fit(net, batches, None, TrainConfig(epochs=2))
    err = capsys.readouterr().err
    assert "epoch 1:" in err and "0/5" in err and "batch/s" in err and "train:" in err  # drawn at its start
    fit(net, batches, None, TrainConfig(epochs=2, quiet=True))
    assert capsys.readouterr().err == ""

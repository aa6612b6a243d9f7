"""What compress, fit and evaluate say about inputs that are not what they need, before any work is done."""

import collections
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bayescompress import GaussianPrior, GaussianSNR, Magnitude, PipelineConfig, TrainConfig, compress, fit
from bayescompress.inference import Callback
from bayescompress.data import as_batch
from bayescompress.metrics import evaluate
from bayescompress.nn import bayesianize_

QUIET = PipelineConfig(quiet=True, max_accuracy_loss=1.0)


def _data(n=48, features=4, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=generator), torch.randint(0, classes, (n,), generator=generator)


def _batches(x, y, size=16):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_as_batch_names_what_a_loader_yields_and_what_to_give():
    x, y = _data(4)
    with pytest.raises(ValueError, match=r"yields dicts \(keys 'x', 'y'\).*\(inputs, labels\) pairs"):
        as_batch({"x": x, "y": y}, "train_loader")
    with pytest.raises(ValueError, match=r"yields tuples of 3; .*default_collate\(items\)\[:2\] keeps the first two"):
        as_batch((x, x, y), "train_loader")
    with pytest.raises(ValueError, match="yields Tensor;"):
        as_batch(x, "the loader")
    with pytest.raises(ValueError, match=r"single examples \(labels of shape \(\)\)"):
        as_batch((x[0], y[0]), "val_loader")
    with pytest.raises(ValueError, match=r"labels of shape \(4, 1\).*y.squeeze\(1\)"):
        as_batch((x, y[:, None]), "train_loader")
    with pytest.raises(ValueError, match="type torch.float32"):
        as_batch((x, y.float()), "train_loader")
    with pytest.raises(ValueError, match="4 inputs with 3 labels"):
        as_batch((x, y[:3]), "train_loader")
    inputs, labels = as_batch([x, y.int()], "train_loader")  # a list pair; int32 labels become int64
    assert inputs is x and labels.dtype == torch.int64 and torch.equal(labels, y)


def test_int32_labels_train_and_evaluate_as_int64_ones_do():
    x, y = _data()
    runs = []
    for labels in (y, y.int()):
        net = bayesianize_(_net(), GaussianPrior())
        history = fit(net, _batches(x, labels), None, TrainConfig(epochs=2, seed=0, quiet=True))
        runs.append((history[-1]["loss"], evaluate(net, _batches(x, labels), samples=0)["nll"]))
    assert runs[0] == runs[1]


def test_compress_refuses_an_empty_train_loader_before_any_work():
    x, y = _data(10)
    empty = DataLoader(TensorDataset(x, y), batch_size=16, drop_last=True)
    with pytest.raises(ValueError, match=r"train_loader yields no batch \(a drop_last loader"):
        compress(_net(), empty, _batches(x, y), Magnitude(), pipeline=QUIET)


def test_compress_refuses_what_is_not_a_pretrained_deterministic_network():
    x, y = _data()
    data = _batches(x, y)
    with pytest.raises(ValueError, match=r"model is the class Sequential; give a network built from it"):
        compress(nn.Sequential, data, data, Magnitude(), pipeline=QUIET)
    with pytest.raises(ValueError, match=r"already Bayesian \(0, 2\).*before bayesianize_"):
        compress(bayesianize_(_net(), GaussianPrior()), data, data, "sparse-vd", pipeline=QUIET)
    with pytest.raises(ValueError, match=r"pipeline must be a PipelineConfig; got dict"):
        compress(_net(), data, data, Magnitude(), pipeline={"quiet": True})


def test_bayesianize_says_which_layers_keep_the_prior_they_already_have():
    net = bayesianize_(_net(), GaussianPrior(), include="0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converting the rest warns about nothing
        bayesianize_(net, GaussianPrior(scale=0.1), include="2")
    with pytest.warns(UserWarning, match=r"already Bayesian, left with the prior they have: 0 \(GaussianPrior\), "
                                         r"2 \(GaussianPrior\)"):
        bayesianize_(net, GaussianPrior(scale=0.5))
    assert float(net[0].prior.scale) == 1.0 and float(net[2].prior.scale) == pytest.approx(0.1)


_Output = collections.namedtuple("Output", "logits loss")


class _Returns(nn.Module):
    def __init__(self, wrap):
        super().__init__()
        self.body, self.wrap = _net(), wrap

    def forward(self, x):
        return self.wrap(self.body(x))


@pytest.mark.parametrize("wrap, message", [
    (lambda z: (z, z.mean()), "returns a tuple; compress needs a classifier whose forward returns one"),
    (lambda z: {"logits": z}, "returns a dict;"),
    (lambda z: _Output(z, z.mean()), "returns a namedtuple Output;"),
    (lambda z: z[:, :, None], r"returns outputs of shape \(8, 3, 1\)"),
    (lambda z: z.softmax(-1), "returns probabilities.*remove the final softmax"),
])
def test_compress_refuses_outputs_that_are_not_one_tensor_of_logits(wrap, message):
    x, y = _data()
    with pytest.raises(ValueError, match=message):
        compress(_Returns(wrap), _batches(x, y), _batches(x, y), Magnitude(), pipeline=QUIET)


def test_log_probabilities_are_logits_to_compress():
    x, y = _data()
    result = compress(_Returns(lambda z: z.log_softmax(-1)), _batches(x, y), _batches(x, y),
                      GaussianSNR(epochs=1, finetune_epochs=0), pipeline=QUIET)
    assert result.metrics["exported"]["accuracy"] > 0


def test_compress_checks_the_validation_batches_format_first():
    x, y = _data()
    with pytest.raises(ValueError, match="val_loader yields dicts"):
        compress(_net(), _batches(x, y), [{"x": x, "y": y}], Magnitude(), pipeline=QUIET)
    with pytest.raises(ValueError, match=r"val_loader yields single examples"):
        compress(_net(), _batches(x, y), TensorDataset(x, y), Magnitude(), pipeline=QUIET)


def test_a_compute_budget_reads_a_conv_batchnorm_chain_once_the_batchnorm_is_folded():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 3))
    net.eval()
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 3, (32,))
    data = _batches(x, y)
    full = 6 * 9 * 36 + 6 * 36 * 3
    result = compress(net, data, data, Magnitude(keep_fraction=0.5, finetune_epochs=1, target_macs=full // 2),
                      pipeline=QUIET)
    assert result.metrics["macs"]["exported"] <= full // 2


def test_load_names_a_class_given_for_the_architecture(tmp_path):
    from bayescompress import load

    x, y = _data()
    result = compress(_Returns(lambda z: z), _batches(x, y), _batches(x, y), Magnitude(finetune_epochs=0),
                      pipeline=QUIET)
    result.save(tmp_path / "run", plots=False)
    with pytest.raises(ValueError, match=r"model is the class _Returns; give the architecture built from it"):
        load(tmp_path / "run", model=_Returns)
    assert load(tmp_path / "run", model=_Returns(lambda z: z)).model(x).shape == (48, 3)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x).relu()
        return self.head(h + self.b(h).relu())


def test_the_export_names_units_the_masks_switch_off_but_a_residual_sum_keeps():
    x, y = _data()
    method = GaussianSNR(epochs=1, level="unit", keep_fraction=0.5, finetune_epochs=0)
    with pytest.warns(UserWarning, match=r"the export keeps units the masks switch off, in a \(\d of 6\), b \(\d of "
                                         r"6\): their channels are tied to kept ones \(a residual sum") as caught:
        result = compress(_Residual(), _batches(x, y), _batches(x, y), method, pipeline=QUIET)
    kept = {name: int(units.sum()) for name, units in result.masks.units.items()}
    assert kept["a"] == kept["b"] == 3  # half of each, not the same half: the sum keeps the union
    union = int((result.masks.units["a"] | result.masks.units["b"]).sum())
    assert result.metrics["architecture"]["exported"] == [union, union, 3]
    message = next(str(w.message) for w in caught if "export keeps" in str(w.message))
    assert f"a ({union - 3} of 6), b ({union - 3} of 6)" in message


def test_a_training_label_outside_the_classes_stops_with_a_message_in_the_datas_terms():
    x, y = _data()
    y = y.clone()
    y[5] = 7
    net = bayesianize_(_net(), GaussianPrior())
    with pytest.raises(ValueError, match=r"a training label \(0 to 7 in this batch\) is not one of the network's 3 "
                                         r"classes; labels must be class indices 0 to 2"):
        fit(net, _batches(x, y), None, TrainConfig(epochs=1, quiet=True))


def test_load_refuses_a_model_that_is_not_a_network(tmp_path):
    from bayescompress.runs import build_original

    with pytest.raises(ValueError, match="model must be an nn.Module .*; got str"):
        build_original({"kind": "caller"}, model="lenet5")


class _ShiftsItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.norm, self.head = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x):
        x -= 0.5  # in place, on the caller's tensor
        return self.head(self.norm(self.body(x)).relu())


def test_output_layers_trace_a_network_that_changes_its_input_in_place_and_keep_each_modules_mode():
    from bayescompress.nn import output_layers

    net = _ShiftsItsInput().train()
    net.norm.eval()  # the user's choice inside a training network
    assert output_layers(net, torch.randn(4, 4)) == ["head"]  # in place on a leaf that requires grad would fail
    assert net.training and net.body.training and not net.norm.training


class _Float(nn.Module):
    def forward(self, x):
        return x.float()


class _Stream(torch.utils.data.IterableDataset):
    """``batches`` batches of an IterableDataset without a length."""

    def __init__(self, batches: int) -> None:
        self.batches = batches

    def __iter__(self):
        x, y = _data(16 * self.batches)
        return iter(_batches(x, y))


class _SizedStream(_Stream):
    def __len__(self) -> int:
        return self.batches


class _Counted(list):
    """A list of batches whose len() undercounts them (an estimated length)."""

    def __init__(self, batches, told: int) -> None:
        super().__init__(batches)
        self.told = told

    def __len__(self) -> int:
        return self.told


def test_the_test_loader_is_checked_before_the_training_not_after():
    x, y = _data()
    with pytest.raises(ValueError, match=r"test_loader gives float64 inputs of shape \(4,\) per example where "
                                         r"val_loader gives float32"):
        compress(_net(), _batches(x, y), _batches(x, y), GaussianSNR(epochs=50), test_loader=_batches(x.double(), y),
                 pipeline=QUIET)  # it failed once the 50 epochs were done
    with pytest.raises(ValueError, match=r"test_loader yields dicts"):
        compress(_net(), _batches(x, y), _batches(x, y), GaussianSNR(epochs=50),
                 test_loader=[{"x": x, "y": y}], pipeline=QUIET)


def test_float64_validation_data_is_named_as_the_validation_datas_fault_not_the_test_datas():
    x, y = _data()
    with pytest.raises(ValueError, match=r"a validation batch of float64 inputs .* convert the inputs"):
        compress(_net(), _batches(x, y), _batches(x.double(), y), GaussianSNR(epochs=1), test_loader=_batches(x, y),
                 pipeline=QUIET)


def test_a_checkpointed_run_refuses_a_shuffled_validation_loader(tmp_path):
    x, y = _data()
    shuffled = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    with pytest.raises(ValueError, match=r"val_loader shuffles .* give an unshuffled validation loader"):
        compress(_net(), _batches(x, y), shuffled, GaussianSNR(epochs=1), pipeline=QUIET, checkpoint=tmp_path / "c")


def test_training_inputs_of_another_float_type_and_a_stream_without_length_are_named():
    x, y = _data()
    net = bayesianize_(_net(), GaussianPrior())
    with pytest.raises(ValueError, match=r"train_loader gives float64 inputs to a network of float32 weights, "
                                         r"which failed .*: convert them"):
        fit(net, _batches(x.double(), y), None, TrainConfig(epochs=1, quiet=True))
    # a network that converts its inputs itself trains on them
    converting = nn.Sequential(_Float(), bayesianize_(_net(), GaussianPrior()))
    fit(converting, _batches(x.double(), y), None, TrainConfig(epochs=1, quiet=True))
    with pytest.raises(ValueError, match=r"DataLoader over a _Stream without a length.*give the dataset a __len__"):
        fit(net, DataLoader(_Stream(3), batch_size=None), None, TrainConfig(epochs=1, quiet=True))


def test_a_loader_that_undercounts_its_batches_is_named_and_the_linear_schedule_stops_at_zero():
    x, y = _data(64)
    net = bayesianize_(_net(), GaussianPrior())
    rates = []

    class Rates(Callback):
        def on_batch_end(self, trainer, batch, loss):
            rates.append(trainer.optimizer.param_groups[0]["lr"])

    with pytest.warns(UserWarning, match=r"train_loader gave 4 batches in epoch 1 where its len\(\) says 2"):
        fit(net, _Counted(_batches(x, y), told=2), None, TrainConfig(epochs=1, quiet=True, lr_schedule="linear"),
            callbacks=[Rates()], n_train=64)
    assert min(rates) == 0.0  # it went to -lr (gradient ascent) on the batches beyond len()


def test_the_kl_counts_the_examples_a_subset_sampler_draws_not_the_whole_dataset():
    from bayescompress.inference.train import _dataset_size

    x, y = _data(100)
    loader = DataLoader(TensorDataset(x, y), batch_size=10,
                        sampler=torch.utils.data.SubsetRandomSampler(range(80)))  # the other 20: validation
    assert _dataset_size(loader) == 80
    assert _dataset_size(DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)) == 100


def test_a_checkpointed_run_over_an_iterable_dataset_warns_that_a_resume_may_differ(tmp_path):
    x, y = _data()
    stream = DataLoader(_SizedStream(3), batch_size=None)
    with pytest.warns(UserWarning, match="reads an IterableDataset.*a run resumed from it may see other batches"):
        compress(_net(), stream, _batches(x, y), GaussianSNR(epochs=1, finetune_epochs=0), pipeline=QUIET,
                 checkpoint=tmp_path / "c")

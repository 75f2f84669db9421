"""The Speck ladder's end-task probe reads the model's values (counts / norm), as the probe was trained."""

import os
import warnings

import torch

from demo_helpers import EX, load_checkpoint, load_example, load_test_split, strict_model
from neurodeploy import api
from neurodeploy.targets import get_target

N = 120  # images 7, 108 and 113 are classified differently by the probe on raw counts (the old defect)


def test_ladder_reference_accuracy_equals_the_pytorch_probe():
    ckpt = load_checkpoint(os.path.join(EX, "digits_chain.pt"))
    model = strict_model(load_example("digits_chain.py", "digits_chain_ladder"), ckpt)
    x, y = load_test_split()
    x, y = x[:N], y[:N]
    with torch.no_grad():
        feats = model.encoder(torch.as_tensor(x, dtype=torch.float32)).double()  # spike count / 4
    w = torch.as_tensor(ckpt["probe"]["weight"], dtype=torch.float64)
    b = torch.as_tensor(ckpt["probe"]["bias"], dtype=torch.float64)
    torch_pred = (feats @ w.T + b).argmax(1)
    assert torch.any((4 * feats @ w.T + b).argmax(1) != torch_pred)  # raw counts would give other answers
    torch_acc = float((torch_pred == torch.as_tensor(y)).double().mean())

    prepared = api.prepare(os.path.join(EX, "digits_chain.pt"), arch=os.path.join(EX, "digits_chain.py") + ":build_model")
    assert prepared.canonical.metadata["neuron_norms"]["encoder.spike_out"] == 4.0  # folded: counts flow
    probe = prepared.probe
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = get_target("speck").verify(prepared.canonical, x, labels=y, probe=(probe["weight"], probe["bias"]),
                                         remedy=False)
    assert rep.task["R0"]["accuracy"] == torch_acc and rep.task["R0"]["agreement"] == 1.0
    assert "accuracy" in rep.table()

"""quantizable_nodes lists exactly the nodes prepare annotates, BN fusion included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.models.tiny_models import ConvBN
from workbench.graph.view import describe
from workbench.model.capture import CapturedModel, ModelSpec, dynamic_dims, export_model
from workbench.quantization.quantizer import quantizable_nodes
from workbench.quantization.recipe import Recipe
from workbench.stages.steps import prepare


class LinearBN(nn.Module):
    """linear -> BatchNorm1d -> relu -> linear: prepare_pt2e folds the BN into fc1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 4)
        self.bn = nn.BatchNorm1d(4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def captured(model: nn.Module, example: torch.Tensor) -> CapturedModel:
    program, _ = export_model(model.eval(), (example,))
    return CapturedModel(ModelSpec("sample", "tiny"), program, (example,),
                         dynamic_dims(program), 0.0)  # fmt: skip


MODELS = {
    "linear_bn": (LinearBN, (4, 6)),
    "conv_bn": (ConvBN, (2, 1, 5, 5)),
}


@pytest.mark.parametrize("backend", ["x86_inductor", "xnnpack"])
@pytest.mark.parametrize("mode", ["ptq", "qat"])
@pytest.mark.parametrize("name", list(MODELS))
def test_quantizable_nodes_are_what_prepare_annotates(name: str, mode: str, backend: str) -> None:
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    model = captured(cls(), torch.randn(*shape))
    recipe = Recipe(mode=mode, backend=backend)  # type: ignore[arg-type]
    listed = quantizable_nodes(model.graph_module(), recipe, describe(model.graph_module()))
    annotated = prepare(model, recipe).applied
    print(name, mode, backend, list(listed), list(annotated))
    assert list(listed) == list(annotated)
    assert listed == annotated

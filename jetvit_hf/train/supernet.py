"""The post-training-search supernet: every layer holds one attention module per candidate type.

All candidates of a layer start from that layer's inherited q/k/v/o projections (and, for `"linear"`, its convolution
of V where the base layer already has one; else the convolution starts at zero); norms, LayerScale and the MLP are
shared. Training samples one subnet per step (uniform per layer, seeded by the step so every process draws the same); `extract` returns an ordinary
JetViT model of the same head class whose outputs equal the supernet's for that assignment.
"""

import copy
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..convert import SUPERNET_FILE, check_checkpoint_files, load_jetvit
from ..io import atomic_directory, atomic_write_json, read_json
from ..layouts import normalize_candidates
from ..models.jetvit.modeling_jetvit import JETVIT_ATTENTION_CLASSES, JetViTPreTrainedModel


LINEAR_CONV_PREFIXES = ("dynamic_conv.", "static_conv.")  # the parameters of a linear layer's convolution of V


def encoder_layers(model: JetViTPreTrainedModel) -> nn.ModuleList:
    return getattr(model, model.base_model_prefix, model).encoder.layer


class SupernetAttention(nn.Module):
    """One attention module per candidate type; `active` picks the one `forward` runs."""

    def __init__(self, candidates: dict[str, nn.Module]):
        super().__init__()
        self.candidates = nn.ModuleDict(candidates)
        self.active = next(iter(candidates))

    def forward(self, *args, **kwargs):
        return self.candidates[self.active](*args, **kwargs)


class JetViTSupernet(nn.Module):
    """A JetViT model (any head class) whose layers each hold several attention candidates.

    Args:
        model: The converted JetViT (its current attention modules are the weights every candidate inherits).
        candidates: One list of attention types for all layers, or one list per layer. Default: stage 1,
            `["linear", "window"]` everywhere.
        inherit_full_from: Optionally a JetViT of the same shape whose layers' projections the `"full"` candidates
            start from instead (stage 2: full attention starts as the teacher's own layer, not a stage-1 module).
    """

    def __init__(self, model: JetViTPreTrainedModel, candidates=None, inherit_full_from: JetViTPreTrainedModel | None = None):
        super().__init__()
        config = model.config
        self.candidates = normalize_candidates(candidates, config.num_hidden_layers)
        self.model = model
        full_sources = encoder_layers(inherit_full_from) if inherit_full_from is not None else None
        for index, layer in enumerate(self.layers):
            modules = {}
            for attention_type in self.candidates[index]:
                inherited = full_sources[index].attention if attention_type == "full" and full_sources else layer.attention
                module = JETVIT_ATTENTION_CLASSES[attention_type](config, index)
                for submodule in module.modules():  # the checkpoint's own init: a new kernel generator starts at zero
                    model._init_weights(submodule)
                module.to(device=inherited.o_proj.weight.device, dtype=inherited.o_proj.weight.dtype)
                own_state = module.state_dict()
                shared = {k: v for k, v in inherited.state_dict().items() if k in own_state}
                if attention_type == "linear":  # a convolution the base layer lacks keeps its fresh init
                    shared = {**{k: v for k, v in own_state.items() if k.startswith(LINEAR_CONV_PREFIXES)}, **shared}
                module.load_state_dict(shared, strict=True)
                modules[attention_type] = module
            layer.attention = SupernetAttention(modules)
        self.set([layer[0] for layer in self.candidates])

    @property
    def config(self):
        return self.model.config

    @property
    def layers(self) -> nn.ModuleList:
        return encoder_layers(self.model)

    @property
    def assignment(self) -> list[str]:
        return [layer.attention.active for layer in self.layers]

    @property
    def num_subnets(self) -> int:
        total = 1
        for layer in self.candidates:
            total *= len(layer)
        return total

    def set(self, assignment: Sequence[str]) -> None:
        """Activate one subnet: an attention type per layer, each among that layer's candidates."""
        self.check_assignment(assignment)
        for layer, attention_type in zip(self.layers, assignment):
            layer.attention.active = attention_type
            layer.attention_type = attention_type
        self.config.attention_types = list(assignment)

    def check_assignment(self, assignment: Sequence[str]) -> None:
        if len(assignment) != len(self.candidates):
            raise ValueError(f"An assignment needs one attention type per layer ({len(self.candidates)}), got {len(assignment)}.")
        for index, (attention_type, allowed) in enumerate(zip(assignment, self.candidates)):
            if attention_type not in allowed:
                raise ValueError(f"Layer {index}: {attention_type!r} is not among its candidates {allowed}.")

    def sample(self, step: int, seed: int = 0) -> list[str]:
        """The subnet of training step `step`: uniform per layer, the same on every process for the same step."""
        rng = random.Random(seed * 1_000_003 + step)
        return [rng.choice(layer) for layer in self.candidates]

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def extract(self, assignment: Sequence[str] | None = None) -> JetViTPreTrainedModel:
        """A standalone JetViT of the same head class with `attention_types = assignment` and the supernet's weights."""
        assignment = list(self.assignment if assignment is None else assignment)
        self.check_assignment(assignment)
        config = copy.deepcopy(self.config)
        config.attention_types = assignment
        state = {}
        for name, tensor in self.model.state_dict().items():
            if ".attention.candidates." not in name:
                state[name] = tensor
                continue
            prefix, rest = name.split(".attention.candidates.", 1)
            candidate, rest = rest.split(".", 1)
            layer_index = int(prefix.rsplit(".", 1)[-1])
            if candidate == assignment[layer_index]:
                state[f"{prefix}.attention.{rest}"] = tensor
        state = {name: tensor.detach().clone() for name, tensor in state.items()}  # the extract owns its weights
        parameter = next(self.model.parameters())
        with torch.device("meta"):
            extracted = type(self.model)(config)
        extracted.load_state_dict(state, strict=True, assign=True)
        for name, buffer in extracted.named_buffers():  # non-persistent buffers are not in the state dict
            if buffer.is_meta:
                owner, _, attribute = name.rpartition(".")
                module = extracted.get_submodule(owner)
                module.register_buffer(attribute, self.model.get_buffer(name).clone(), persistent=False)
        return extracted.to(device=parameter.device).train(self.training)

    def save_pretrained(self, save_directory: str | os.PathLike, overwrite: bool = True) -> None:
        """Atomically write the wrapped model's config and weights plus `supernet.json` (the candidate sets)."""
        from safetensors.torch import save_file

        with atomic_directory(save_directory, overwrite=overwrite) as staging:
            self.config.save_pretrained(staging)
            state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
            save_file(state, staging / "supernet.safetensors", metadata={"format": "pt"})
            atomic_write_json(
                staging / SUPERNET_FILE,
                {"model_class": type(self.model).__name__, "candidates": self.candidates, "active": self.assignment},
            )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, candidates=None, **kwargs) -> "JetViTSupernet":
        """Load a saved supernet, or build one from a converted JetViT directory or a source checkpoint.

        A saved supernet keeps its candidates unless `candidates` names new ones (every new candidate then starts
        from the active one's projections: the stage-2 supernet built from stage 1's weights).
        """
        from ..models.jetvit import modeling_jetvit
        from ..models.jetvit.configuration_jetvit import JetViTConfig

        path = Path(path)
        if (path / SUPERNET_FILE).is_file():
            from safetensors.torch import load_file

            check_checkpoint_files(path)  # a broken file is an error that names it
            meta = read_json(path / SUPERNET_FILE)
            config = JetViTConfig.from_pretrained(path)
            model = getattr(modeling_jetvit, meta["model_class"])(config)
            supernet = cls(model, meta["candidates"])
            supernet.model.load_state_dict(load_file(path / "supernet.safetensors"), strict=True)
            supernet.set(meta["active"])
            if candidates is None:
                return supernet
            return cls(supernet.extract(), candidates)
        return cls(load_jetvit(path, **kwargs), candidates)

"""JetViT-HF: fast hybrid-attention ViTs converted from DINOv2 / DINOv3 / Depth Anything, as transformers models.

Importing the package registers JetViT with the transformers Auto classes, so installed users need no remote code.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForDepthEstimation,
    AutoModelForSemanticSegmentation,
)

from .models.jetvit.configuration_jetvit import ATTENTION_TYPES, JetViTConfig
from .convert import convert_to_jetvit
from .models.jetvit.modeling_jetvit import (
    JetViTBackbone,
    JetViTForDepthEstimation,
    JetViTForSemanticSegmentation,
    JetViTModel,
    JetViTPreTrainedModel,
)

AutoConfig.register(JetViTConfig.model_type, JetViTConfig, exist_ok=True)
AutoModel.register(JetViTConfig, JetViTModel, exist_ok=True)
AutoBackbone.register(JetViTConfig, JetViTBackbone, exist_ok=True)
AutoModelForDepthEstimation.register(JetViTConfig, JetViTForDepthEstimation, exist_ok=True)
AutoModelForSemanticSegmentation.register(JetViTConfig, JetViTForSemanticSegmentation, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "ATTENTION_TYPES",
    "convert_to_jetvit",
    "JetViTBackbone",
    "JetViTConfig",
    "JetViTForDepthEstimation",
    "JetViTForSemanticSegmentation",
    "JetViTModel",
    "JetViTPreTrainedModel",
]

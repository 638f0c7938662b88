"""stemstream.train: the one training loop for every model family (SPEC sections 2 and 6).

``ModelTrainer(load_config(ModelTrainConfig, "configs/model/tiny.yaml")).run()`` trains from a
token dump and resumes from its newest checkpoint; :func:`load_model` rebuilds a trained model.
"""

from stemstream.train.config import ModelSpec, ModelTrainConfig
from stemstream.train.families import FAMILIES, get_family, register_family
from stemstream.train.loop import LoadedModel, ModelTrainer, load_model

__all__ = [
    "FAMILIES",
    "LoadedModel",
    "ModelSpec",
    "ModelTrainConfig",
    "ModelTrainer",
    "get_family",
    "load_model",
    "register_family",
]

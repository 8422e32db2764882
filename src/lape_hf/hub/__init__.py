"""Publishing LapeViT models: checks of a model directory, the model card, the upload, and a local Hub cache entry."""

from ..training.results import ResultsError
from .cache import install_in_hub_cache
from .model_card import CardSource, CardSourceError, render_model_card
from .publish import (
    CheckedModelDirectory,
    ModelDirectoryError,
    PublishError,
    UploadPlan,
    check_model_directory,
    check_repo_id,
    prepare_upload,
    upload,
)

__all__ = [
    "CardSource",
    "CardSourceError",
    "CheckedModelDirectory",
    "ModelDirectoryError",
    "PublishError",
    "ResultsError",
    "UploadPlan",
    "check_model_directory",
    "check_repo_id",
    "install_in_hub_cache",
    "prepare_upload",
    "render_model_card",
    "upload",
]

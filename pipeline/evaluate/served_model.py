"""The MLflow pyfunc a registered model is: RGB uint8 images in, class-index masks out.

This module is what `mlflow models serve` and `mlflow.pyfunc.load_model` import, from the
model's own copy of `apcnet/` and `pipeline/` (its `code_paths`); it imports neither Ray nor
MLflow's tracking. The checkpoint is the model's one artifact; each image is predicted as
`jobs/predict.py` predicts it (`normalize` with the checkpoint's mean and std, then
`predict_label_map` in whole-image mode, one image at a time), so its masks are the same
pixel for pixel.

Input: uint8 (N, H, W, 3) RGB, or images of different sizes: a list of uint8 (H, W, 3) arrays
(the Python model itself) or, through `mlflow.pyfunc.load_model(...).predict`, whose signature
check wants an array, `image_batch(images)`: a 1-D object array of them. Output: int64 class
indices (N, H, W), or a list of (H, W) arrays for images of different sizes.
"""

from __future__ import annotations

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

CHECKPOINT_ARTIFACT = "checkpoint"


class ImageInputError(MlflowException):
    """An input that is not RGB uint8 images; the scoring server answers it with HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class SegmentationPyfunc(PythonModel):
    """APCNet behind MLflow's pyfunc interface (see the module docstring)."""

    def load_context(self, context) -> None:
        from pipeline.evaluate.model import load_project_checkpoint

        self.inference = load_project_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])

    # np.ndarray: MLflow reads the hint, leaves the check to the signature and does not warn.
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray | list:
        """model_input: uint8 (N, H, W, 3), or images of different sizes (a list, or
        `image_batch`); see the module docstring."""
        from pipeline.data.transforms import normalize
        from pipeline.evaluate.testtime import TestTimeOptions, predict_label_map

        images = checked_images(model_input)
        options = TestTimeOptions()
        model, mean, std = self.inference.model, self.inference.mean, self.inference.std
        masks = [predict_label_map(model, normalize(image, mean, std), options) for image in images]
        if isinstance(model_input, np.ndarray) and model_input.dtype != object:
            return np.stack(masks) if masks else np.zeros((0, 0, 0), dtype=np.int64)
        return masks


def image_batch(images) -> np.ndarray:
    """Images of different sizes, uint8 (H, W, 3) each, as the 1-D object array that MLflow's
    signature check lets through to `predict`."""
    batch = np.empty(len(images), dtype=object)
    for index, image in enumerate(images):
        batch[index] = image
    return batch


def checked_images(model_input) -> list[np.ndarray]:
    """The images of `model_input`, each uint8 (H, W, 3); ImageInputError naming the first
    one that is not."""
    if isinstance(model_input, np.ndarray) and model_input.dtype == object:
        images = [np.asarray(image) for image in model_input]
    elif isinstance(model_input, np.ndarray):
        if model_input.ndim != 4:
            raise ImageInputError(
                f"expected a batch of RGB images, uint8 of shape (N, H, W, 3); got shape "
                f"{model_input.shape}. Send one image as a list of one (H, W, 3) array"
            )
        images = list(model_input)
    elif isinstance(model_input, list | tuple):
        images = [np.asarray(image) for image in model_input]
    else:
        raise ImageInputError(
            f"expected RGB images, uint8 (N, H, W, 3) or a list of (H, W, 3) arrays; got "
            f"{type(model_input).__name__}"
        )
    for index, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ImageInputError(
                f"image {index}: expected RGB uint8 of shape (H, W, 3), values 0-255; got "
                f"{image.dtype} of shape {image.shape}"
            )
        if min(image.shape[:2]) < 1:
            raise ImageInputError(f"image {index} is empty: shape {image.shape}")
    return images

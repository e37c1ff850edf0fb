"""cloost: a learned codec that stores a small image as a few bytes.

The public API is imported lazily so that `cloost --help` and `cloost --version` do not pay for
importing torch.
"""
__version__ = "0.1.0"

# Beam width of the encoder unless told otherwise: the same files and decoder as a greedy search,
# better reconstructions (measured in BENCHMARKS.md) for W times the search work.
DEFAULT_BEAM = 8

__all__ = ["compress", "decompress", "compress_batch", "decompress_batch", "load_model", "__version__"]


def __getattr__(name):
    if name in ("compress", "decompress", "compress_batch", "decompress_batch", "load_model"):
        from . import codec

        return getattr(codec, name)
    raise AttributeError(f"module 'cloostcodec' has no attribute {name!r}")

"""The post-training decoding stage: hidden states (MAP or sampled) and posterior marginals of a
trained run, as Parquet files and pictures. Entry points: :func:`run_decoding` (called by the
training entry point) and ``python -m enumdist.decode run_dir=<dir>``."""

from enumdist.decoding.checkpoint import CheckpointMismatchError
from enumdist.decoding.decoder import decode_batch
from enumdist.decoding.stage import DecodeOptions, run_decoding

__all__ = ["CheckpointMismatchError", "DecodeOptions", "decode_batch", "run_decoding"]

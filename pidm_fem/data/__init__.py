"""Data files: crash-safe, resumable HDF5 sample files tied to a mesh fingerprint."""

from .generate import generate_samples
from .store import BadSample, DatasetError, SampleFile, load_samples, partial_path

__all__ = ["BadSample", "DatasetError", "SampleFile", "generate_samples", "load_samples", "partial_path"]

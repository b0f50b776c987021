"""Data files: resumable HDF5 sample files tied to a mesh fingerprint."""

from .generate import generate_samples
from .store import DatasetError, SampleFile, load_samples, partial_path

__all__ = ["DatasetError", "SampleFile", "generate_samples", "load_samples", "partial_path"]

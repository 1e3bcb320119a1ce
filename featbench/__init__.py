"""featbench: feature-cache-first few-shot adaptation of CLIP models.

Importing the package is cheap on purpose (no torch, no open_clip, no h5py) so that
`featbench --help` and `featbench table` start fast; heavy modules are imported lazily.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

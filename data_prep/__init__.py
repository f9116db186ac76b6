"""Data preparation: read raw files, check them, and write the prepared arrays training reads.

Modules: `mnist` (IDX files), `svhn` (official .mat files), `street_digits` (the offline SVHN
stand-in), `pairing` (the MNIST–SVHN pair protocol), `mnist_svhn` (the `prepare` step) and `cli`.
"""

from data_prep.errors import DataError

__all__ = ["DataError"]

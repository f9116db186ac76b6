"""Datasets over prepared arrays, and the loader that turns them into batches."""

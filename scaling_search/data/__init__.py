"""Data: dataset sources, image decoding, the on-disk array cache and dataset download."""

"""Shared fixtures. Tests run on CPU with one intra-op thread per process so parallel work stays fair."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

"""Kept importable for code written against it: the record and helpers live in
:mod:`fastattn.attention_args`, below every layer."""
from fastattn.attention_args import *  # noqa: F401,F403
from fastattn.attention_args import __all__  # noqa: F401

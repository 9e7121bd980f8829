"""Integrations with other libraries. Each submodule imports its library, so import the
one you need: ``import fastattn.integrations.transformers`` registers
``attn_implementation="fastattn"`` with Hugging Face transformers."""

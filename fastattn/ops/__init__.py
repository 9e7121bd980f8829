"""Core ops: each family's ``torch.library.custom_op`` wrappers with fake
(meta) implementations and autograd. They know nothing of validation (done
once, in the public functions) and call whichever backend
:mod:`fastattn.dispatch` picked."""

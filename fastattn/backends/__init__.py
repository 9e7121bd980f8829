"""Backend implementations: one module per (backend, op family), each declaring a table of
the core ops it implements (``OPS``) and, for the first module of a backend, its
availability rule (``available(device)``). :mod:`fastattn.dispatch` lists the modules of
each backend (``BACKEND_MODULES``) and reads the tables lazily; importing this package
registers nothing."""

"""Backend implementations, one package per backend: ``reference``, ``triton``, ``cuda``, ``cpu``.

Each package declares, at its top level, the backend's availability rule ``available(device)
-> reason | None`` and its table ``OPS = {core op: (fn, supports[, delegated_to])}``, gathered
from one module per op family inside it. :mod:`fastattn.dispatch` maps each backend name to its
package (``BACKEND_PACKAGES``) and imports it on first use; importing this package, or any
package below it, registers nothing."""

"""``python -m fastattn``: see :mod:`fastattn.cli`."""
import sys

from fastattn.cli import main

if __name__ == "__main__":
    sys.exit(main())

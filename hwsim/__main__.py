"""``python -m hwsim``: the ``hwsim`` command.

Python puts the current folder first on ``sys.path`` for ``-m``; it is removed
before anything else is imported, so a ``tqdm.py`` (or any module) in the
folder you run from cannot replace an installed one (see
:mod:`hwsim.study.sources`).
"""

import os
import sys

if __name__ == "__main__":
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    from hwsim.cli import main

    sys.exit(main())

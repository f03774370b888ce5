"""``python -m trainbus``: the same as the ``trainbus`` command."""

from __future__ import annotations

import os
import sys

from trainbus.orchestrator.cli import main

if __name__ == "__main__":
    # ``python -m`` puts the working directory first on sys.path; the ``trainbus`` command does
    # not. Drop it so both import the same things: a module lying in a run directory (or wherever
    # the command runs) must never shadow one trainbus or a sink imports. ``--app-dir`` adds a
    # directory back where the user asks for one.
    if sys.path and not sys.flags.safe_path and os.path.abspath(sys.path[0]) == os.getcwd():
        del sys.path[0]
    raise SystemExit(main())

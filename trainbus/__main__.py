"""``python -m trainbus``: the same as the ``trainbus`` command."""

from __future__ import annotations

from trainbus.orchestrator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

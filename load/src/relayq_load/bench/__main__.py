"""``python -m relayq_load.bench``."""

from __future__ import annotations

import sys

from relayq_load.bench.cli import main

sys.exit(main())

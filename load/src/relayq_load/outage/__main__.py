"""``python -m relayq_load.outage``."""

from __future__ import annotations

import sys

from relayq_load.outage.cli import main

sys.exit(main())

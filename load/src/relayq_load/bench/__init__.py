"""``make bench``: relayq end to end against bare Celery on this machine (see ``cli``)."""

"""``relayq-outage``: what submitters see, and what happens to their jobs, while Redis stalls
or is down (docs/reliability.md, "Submits during broker outages")."""

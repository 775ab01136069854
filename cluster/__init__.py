"""The batch renderer on Ray: render groups, scheduler, run ledger, lease, monitoring.

The run directory (``cluster.ledger``) is the source of truth; Ray state is disposable. Entry
points: ``s2v run`` / ``s2v status`` / ``s2v submit`` (``s2v.cli_run``), ``cluster.driver.run``.
See docs/cluster.md.
"""

"""The alembic migrations of the node's database (applied by the node at start).

``HEAD_REVISION`` names the newest revision so a node whose database is already
there can skip loading alembic at all (it costs about 11 MB of memory per process);
a test checks it against what alembic computes from ``versions/``.
"""

HEAD_REVISION = "0005_peer_trust"

"""Serving machinery that knows no model: the batcher (gathering inputs into passes), the
door's backlog budget, batch invariance, and CPU/thread placement.

Shared by the ingress (the door) and the model replicas; never loads torch at import, and
never imports img2vec.models (tests/unit/test_layout.py)."""

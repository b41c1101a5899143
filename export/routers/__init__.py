"""Trained routers and baselines: each maps a query to a score per expert.

``base`` holds the one interface and the on-disk layout (``router.json``); ``mlp``,
``bert`` and ``knn`` are the trainable routers, ``baselines`` the paper's reference points.
Nothing here imports torch at module level.
"""

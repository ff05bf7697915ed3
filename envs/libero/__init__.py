"""LIBERO on its own simulator (robosuite 1.4, the ``libero`` extra), under the published
evaluation protocol: suites.py (suites, step limits, initial states), env.py (one task's
environment with the store's observation keys), protocol.py (episodes, resumable results)."""

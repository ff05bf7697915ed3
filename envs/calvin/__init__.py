"""The CALVIN evaluation protocol: chains.py (the 1000 evaluation chains of 5 subtasks, as the
official generator draws them), protocol.py (running chains, average length, success@k)."""

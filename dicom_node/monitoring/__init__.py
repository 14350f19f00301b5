"""Monitoring of the live stream at run time: drift against the commissioning baseline (:mod:`.drift`).

Reads the job store's read side only; imports nothing of evaluation or training.
"""

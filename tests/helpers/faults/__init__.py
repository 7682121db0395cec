"""Test-only fault injection, installed by the tests that need it, never by a job a user runs.

- `training`: training hooks (`KillBeforeReport`, `KillMidEpoch`, `NanLossAt`, the factory
  `two_worker_deaths`, `kill_marker`); pickled by value to Ray workers.
- `tune`: a Tune callback (`InterruptAfterTrials`) that interrupts a search like Ctrl-C.
"""

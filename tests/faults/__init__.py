"""Fault injection: the whole system under client load while processes die,
PostgreSQL restarts, the legacy database drops away and poison events park
sessions; afterwards every acknowledged write must be in both views exactly
once and in order.

CI runs tests/faults/test_faults.py (about two minutes); run the long version
by hand with ``make faults-long`` or ``python -m tests.faults --minutes 10``.
"""

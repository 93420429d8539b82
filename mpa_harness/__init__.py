"""Test harness: network namespaces, test PKI and strongSwan charon peers.

Used by the system tests (``tests/system``), ``mpa-bench`` and by the known-answer recorder
(``tests/vectors/record_charon.py``). Nothing here is imported by ``mpa_ike``.
"""

"""Deployment material shipped for operators: setup, demo, examples and the testbed."""

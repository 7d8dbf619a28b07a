"""The torch-free half of the pipeline: job types, errors, settings, photo checks, queue backends and status.

The chat process imports only this subpackage (tests/test_boundaries.py checks that it never loads torch or the
GPU half); the worker process imports it too, to speak the same job types.
"""

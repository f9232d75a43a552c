"""Helpers shared by the test suites: real local servers that tests drive and inspect."""

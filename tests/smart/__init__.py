"""Test infrastructure for the SMART app: the EHR shim (Node), the app served for real, fixtures."""

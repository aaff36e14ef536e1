"""Trust boundaries: the outbound FHIR client and its allowlist (EHR authentication joins here)."""

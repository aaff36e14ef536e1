"""The CDS Hooks web layer: service registry, request validation, prefetch, cards, endpoints."""

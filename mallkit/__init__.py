"""mallkit: the one shared package of the mall services (no business rules).

Modules: settings, telemetry, errors, auth, db, idempotency, outbox,
pagination, names, server, clients, validation, testing.
"""

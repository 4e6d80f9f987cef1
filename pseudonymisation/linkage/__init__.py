"""The record-linkage service (EUPID-like), on a database of its own.

schema      its tables (persons, registrations, blocking keys, reviews, changes, audit)
matching    scoring two encodings; the two thresholds
pseudonyms  pseudonym format with a check character
service     LinkageService: register, review, re-identify, recluster, change feed
api         the HTTP routes under /identity, with their scope checks
client      how a gateway calls it: in process or over HTTP
synthetic   seeded synthetic identities with realistic errors, for tests and benchmarks
"""

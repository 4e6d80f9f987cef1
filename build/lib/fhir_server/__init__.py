"""FHIR R4B REST server: interactions, bundles, storage and the CapabilityStatement."""

"""The pseudonymisation gateway: what a site sends is de-identified here, before any store.

identity      the quasi-identifiers of one patient, as the gateway reads them
normalise     names, dates and places in one canonical form (transliteration, diacritics)
encoding      keyed field-level Bloom filters and blocking keys: all the linkage service sees
linkage/      the linkage service (own database): matching, pseudonyms, review queue
dicom_deid    DICOM PS3.15 Annex E, the table in data/annex_e.csv
fhir_deid     FHIR resources, the policy in data/fhir_policy.json
gateway       the pipeline that composes them for one site's write
guard         the store boundary's last check: nothing with direct identifiers gets in
"""

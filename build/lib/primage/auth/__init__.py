"""OAuth2 for partners: an authorization server (SMART Backend Services) and the checks
every FHIR and DICOMweb request passes."""

"""Curation: importers that feed the platform in bulk (PACS, DICOMweb, folders, registries)."""

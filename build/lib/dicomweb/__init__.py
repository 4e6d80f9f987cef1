"""DICOMweb archive (PS3.18): STOW-RS, QIDO-RS, WADO-RS over an SQL index and a blob store."""

"""All configuration, from the environment (PRIMAGE_*), in one object the factory is given."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRIMAGE_", extra="ignore")

    data_dir: Path = Path("var")
    database_url: SecretStr | None = None  # default: SQLite at {data_dir}/primage.db
    base_url: str | None = None  # public FHIR base, e.g. https://primage.example.org/fhir
    secret_key: SecretStr | None = None  # signs paging links; default: {data_dir}/secret.key
    fhir_max_body_bytes: int = 32 * 1024 * 1024
    fhir_default_count: int = 50
    fhir_max_count: int = 1000
    # Off only for a bulk load that `primage search reindex` follows: until then, searches
    # miss what was written.
    search_indexing: bool = True
    demo_data: bool = False  # load the synthetic demo set when the store is empty
    log_level: str = "INFO"
    db_pool_size: int = 10

    # DICOMweb archive
    dicomweb_base_url: str | None = None  # public base, e.g. https://primage.example.org/dicomweb
    blob_store: Literal["file", "s3"] = "file"
    blob_dir: Path | None = None  # default: {data_dir}/blobs
    blob_fsync: bool = True  # a blob is on disk before its index row commits
    s3_endpoint_url: str | None = None
    s3_bucket: str = "primage"
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    dicom_duplicates: Literal["reject", "replace"] = "reject"  # same SOP UID, other bytes
    qido_max_results: int = 1000
    dicomweb_max_body_bytes: int = 64 * 1024**3  # per STOW request (streamed to disk)
    # Further attributes QIDO can match on (keywords); `primage dicom reindex` fills them in
    # for instances stored before they were added.
    dicom_extra_query_tags: list[str] = []
    # Patient.identifier.system for the DICOM Patient ID, which the gateway sets to the
    # research pseudonym: a stored study links to the Patient with that pseudonym.
    dicom_patient_id_system: str = "https://primage.eu/fhir/NamingSystem/research-pseudonym"
    cors_origins: list[str] = []  # browser viewers allowed to call the API

    # OAuth2 (SMART Backend Services). Off only for tests and a trusted local deployment.
    auth_enabled: bool = True
    auth_issuer: str | None = None  # public server root, e.g. https://primage.example.org
    auth_token_lifetime: int = 300  # seconds
    auth_token_rate: float = 5.0  # token requests per second per client (burst below)
    auth_token_burst: int = 20
    # An external OpenID Connect provider whose access tokens are accepted as well
    oidc_issuer: str | None = None
    oidc_jwks_file: Path | None = None  # its JWKS (fetch it from the provider's jwks_uri)
    oidc_audience: str | None = None  # what its tokens name in aud for primage ("primage")
    oidc_site_claim: str = "site"
    oidc_scope_claim: str = "scope"
    oidc_allowed_scopes: list[str] = ["system/*.rs"]  # the most its tokens may grant
    oidc_require_site: bool = True  # refuse its tokens without the site claim
    # Queued AuditEvents are staged cheaply and indexed in batches this often (and before
    # any AuditEvent read); 0: only before reads. `primage serve` runs this sweep, and the
    # linkage sync below, in one background process rather than in every worker.
    audit_index_interval: float = 10.0

    # Pseudonymisation gateway (in front of every write from a principal with a site)
    gateway_enabled: bool = True
    gateway_key: SecretStr | None = None  # shared by all gateways; default {data_dir}/gateway.key
    # An edge gateway's own secret for the hospital's local ids (`primage gateway`): only the
    # hospital can then read a sealed id back, the platform cannot
    gateway_site_key: SecretStr | None = None
    gateway_date_shift_days: int = 180  # per-person offsets lie in ±[1, this]
    gateway_patient_name: Literal["pseudonym", "empty"] = "pseudonym"  # DICOM PatientName
    gateway_fhir_policy: Path | None = None  # default: pseudonymisation/data/fhir_policy.json
    # The store boundary refuses a Patient with direct identifiers, and a DICOM instance
    # without PatientIdentityRemoved = YES, whoever sends it.
    identified_data_guard: bool = True
    # Linkage service: in-process on its own database, or a separate service at linkage_url
    linkage_database_url: SecretStr | None = None  # default: SQLite at {data_dir}/linkage.db
    linkage_secret: SecretStr | None = None  # pseudonym key; default {data_dir}/linkage.key
    linkage_url: str | None = None  # e.g. https://identity.example.org (its /identity API)
    linkage_token: SecretStr | None = None  # bearer token for linkage_url
    # How often resolved merges and splits are carried into FHIR and DICOM (0: only by
    # `primage linkage sync`)
    linkage_sync_interval: float = 30.0

    # Shipped terminology and mapping data (mappings/ of the source tree; set in images)
    mappings_dir: Path = Path(__file__).resolve().parents[1] / "mappings"

    # Import jobs' ledger: the importer's own state, with the source's identifiers (see
    # curation/ledger.py); default SQLite at {data_dir}/imports.db
    import_database_url: SecretStr | None = None

    def import_database(self) -> str:
        if self.import_database_url is not None:
            return self.import_database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'imports.db'}"

    def linkage_database(self) -> str:
        if self.linkage_database_url is not None:
            return self.linkage_database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'linkage.db'}"

    def database(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'primage.db'}"

    def blob_path(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"

    def secret(self) -> bytes:
        """The server secret (paging links, signing keys at rest)."""
        return self._configured_or_file(self.secret_key, "secret.key")

    def gateway_secret(self) -> bytes:
        """The gateway key: encodings, UIDs, date offsets, ids (the same for every gateway)."""
        return self._configured_or_file(self.gateway_key, "gateway.key")

    def linkage_key(self) -> bytes:
        """The linkage service's pseudonym key."""
        return self._configured_or_file(self.linkage_secret, "linkage.key")

    def _configured_or_file(self, value: SecretStr | None, name: str) -> bytes:
        """The configured secret, or one generated once into the data dir so every worker
        shares it."""
        if value is not None:
            return value.get_secret_value().encode()
        return key_file(self.data_dir / name)


def key_file(path: Path) -> bytes:
    """A random secret generated once into `path` (mode 600), so every worker shares it.

    Written whole to a file of its own, then linked into place: workers starting together
    all read the one that got there first (never a half-written or a second key), and the
    secret is never readable by others, not even for a moment."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
                f.flush()
                os.fsync(f.fileno())
            os.link(draft, path)
        except FileExistsError:
            pass  # another worker's key is in place: use that one
        finally:
            draft.unlink(missing_ok=True)
    return path.read_text().strip().encode()

"""Where an engine's weights come from: `spec.source`, exactly one of four kinds.

- `huggingFace` (the default): vLLM downloads `spec.model` from the Hub, optionally with a token
  from a Secret and into a PersistentVolumeClaim that keeps the download across restarts;
- `persistentVolumeClaim` / `hostPath`: a volume that already holds the weights, mounted
  read-only;
- `image`: a path inside the engine image.

The CRD's schema refuses more or fewer than one kind (minProperties/maxProperties); `kinds()`
lets the operator say the same when a spec came past an older CRD.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Part(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")


class SecretKeyRef(_Part):
    name: str
    key: str = "token"


class HuggingFaceSource(_Part):
    token_secret: SecretKeyRef | None = Field(default=None, alias="tokenSecret")
    revision: str | None = None
    cache_claim_name: str | None = Field(default=None, alias="cacheClaimName")


class ClaimSource(_Part):
    claim_name: str = Field(alias="claimName")
    path: str = ""


class HostPathSource(_Part):
    path: str


class ImageSource(_Part):
    path: str


class ModelSource(_Part):
    hugging_face: HuggingFaceSource | None = Field(default=None, alias="huggingFace")
    persistent_volume_claim: ClaimSource | None = Field(default=None, alias="persistentVolumeClaim")
    host_path: HostPathSource | None = Field(default=None, alias="hostPath")
    image: ImageSource | None = None

    def kinds(self) -> list[str]:
        """The kinds that are set, by their field names; exactly one in a valid spec."""
        fields = type(self).model_fields
        return [f.alias or n for n, f in fields.items() if getattr(self, n) is not None]


def default_source() -> ModelSource:
    """What the CRD defaults an absent `spec.source` to: download from the Hub."""
    return ModelSource(hugging_face=HuggingFaceSource())

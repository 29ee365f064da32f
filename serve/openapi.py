"""How the upload routes' multipart bodies look in the OpenAPI schema (`/docs`): the routes read their bodies
themselves (serve/multipart.py), so FastAPI cannot infer them."""

from __future__ import annotations

# The volume route's fields: `file` (a FLAIR volume, or a 4D volume of the model's modalities), or the modalities
# one file each (FLAIR required; a modality not sent is a zero channel).
VOLUME_FIELDS = ("file", "flair", "t1", "t1ce", "t2")


def multipart_body(field: str, description: str, many: bool = False) -> dict:
    """The OpenAPI description of a multipart upload (the routes read their bodies themselves)."""
    binary = {"type": "string", "format": "binary"}
    schema = {"type": "object", "required": [field], "properties": {
        field: {"type": "array", "items": binary, "description": description} if many else
        {**binary, "description": description}}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def volume_body() -> dict:
    """The OpenAPI description of the volume route's multipart upload."""
    binary = {"type": "string", "format": "binary"}
    properties = {"file": {**binary, "description": ".nii or .nii.gz: FLAIR, or one 4D volume of the model's "
                                                    "modalities in its order"}}
    properties |= {m: {**binary, "description": f"{m.upper()} volume (instead of `file`; FLAIR required)"}
                   for m in VOLUME_FIELDS[1:]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties}}}}}

"""A stored case as the :class:`~medmask_store.storage.layout.EncodedCase` it was written from: its chunks' bytes
as they are, so that a case moves to another id (:meth:`MaskArchive.rename_case`) without decoding or re-encoding."""

from __future__ import annotations

from medmask_store.errors import CorruptArchive
from medmask_store.model.attributes import ATTRIBUTE_KEY
from medmask_store.model.manifest import LABEL_CODECS, ArrayManifest, unseal
from medmask_store.storage.backend import StoredCase
from medmask_store.storage.layout import DIMENSION_NAMES, EncodedArray, EncodedCase, StorageSettings


def stored_encoded_case(stored: StoredCase, settings: StorageSettings, where: str) -> EncodedCase:
    """The case's content and every stored chunk, checked against its manifest; a damaged case raises
    :class:`CorruptArchive` naming ``where`` (the archive and case) rather than be copied.

    Zstd levels are not stored with a case (decoders do not need them): the arrays carry ``settings``' levels.
    """
    content = unseal(stored.attributes.get(ATTRIBUTE_KEY), f"{where}: attributes")
    manifests = content.pop("arrays", {})
    arrays = []
    for name, described in manifests.items():
        manifest = ArrayManifest.from_json(described, f"{where}/{name}")
        found = stored.open_array(name)
        if found is None:
            raise CorruptArchive(f"{where}/{name}: the array its manifest lists is missing; nothing was changed")
        encoded = [(coords, found.fetch(coords)) for coords in sorted(found.lengths)]
        level = settings.label_level if manifest.codec in LABEL_CODECS else settings.layer_level
        array = EncodedArray(
            name, manifest.shape, manifest.dtype, manifest.chunks, DIMENSION_NAMES[name], manifest.codec, level, encoded
        )
        if array.manifest().bytes_crc32c != manifest.bytes_crc32c or len(encoded) != manifest.stored:
            raise CorruptArchive(f"{where}/{name}: its stored chunks do not match its manifest; nothing was changed")
        arrays.append(array)
    return EncodedCase(content, arrays)

"""A certificate is bound to the version it certifies: the features it was built on are the registry's."""

from __future__ import annotations

import pytest

from inference_service.model_loader import ModelLoadError, check_certificate_binding
from shared.registry_contract import Tag

TAGS = {Tag.FEATURE_CHECKSUM: "a" * 64, Tag.FEATURE_VERSION: "3"}


def test_a_matching_certificate_passes() -> None:
    check_certificate_binding("m", "1", {"feature_checksum": "a" * 64, "feature_version": 3}, TAGS)


@pytest.mark.parametrize("cert, why", [
    ({"feature_checksum": "b" * 64, "feature_version": 3}, "made on other features"),
    ({"feature_checksum": "a" * 64, "feature_version": 2}, "names feature version 2"),
])
def test_a_certificate_from_another_version_is_refused(cert: dict, why: str) -> None:
    with pytest.raises(ModelLoadError, match=why):
        check_certificate_binding("m", "1", cert, TAGS)

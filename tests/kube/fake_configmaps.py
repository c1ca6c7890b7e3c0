"""ConfigMaps in the mock API server, validated as the real one (1.32) validates them, and the metadata checks
it applies to every object the Objects port writes.

- ``metadata.name``: a DNS-1123 subdomain (ConfigMaps), a DNS-1035 label (Services);
- ``metadata.labels``: qualified names mapped to label values (63 characters, alphanumeric ends);
- ``data``/``binaryData`` keys: ``[-._a-zA-Z0-9]+``, at most 253 characters, not ``.``/``..``/``..*``
  (``ValidateConfigMap``); values strings (anything else is the decoder's 400); at most 1 MiB in all;
- ``immutable: true``: from then on ``data``, ``binaryData`` and ``immutable`` itself are Forbidden to change
  (``ValidateConfigMapUpdate``); only a delete and a create change it.
- every namespace gets the ``kube-root-ca.crt`` ConfigMap (the root CA publisher), as a real one does: a list
  without a selector sees it.
"""

from __future__ import annotations

import re
from typing import Any

from tests.kube.fake_state import RESOURCES, ApiError, Cause, Obj, invalid

MAX_SIZE = 1024 * 1024  # core.MaxSecretSize, the limit of a ConfigMap's data and binaryData together
ROOT_CA = "kube-root-ca.crt"
FAKE_CA = "-----BEGIN CERTIFICATE-----\nZmFrZSByb290IENB\n-----END CERTIFICATE-----\n"

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*"
_DNS1035_LABEL = "[a-z]([-a-z0-9]*[a-z0-9])?"
_CONFIG_KEY = "[-._a-zA-Z0-9]+"
_LABEL_VALUE = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
_QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    """apimachinery's validation.RegexError, double spaces included."""
    return msg + " (e.g. " + " or ".join(f"'{e}', " for e in examples) + f"regex used for validation is '{fmt}')"


def _full(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


def subdomain_errors(value: str) -> list[str]:
    errs = []
    if len(value) > 253:
        errs.append("must be no more than 253 characters")
    if not _full(_DNS1123_SUBDOMAIN, value):
        errs.append(_regex_error("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                                 "characters, '-' or '.', and must start and end with an alphanumeric character",
                                 _DNS1123_SUBDOMAIN, "example.com"))
    return errs


def dns1035_errors(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _full(_DNS1035_LABEL, value):
        errs.append(_regex_error("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start "
                                 "with an alphabetic character, and end with an alphanumeric character",
                                 _DNS1035_LABEL, "my-name", "abc-123"))
    return errs


def config_key_errors(key: str) -> list[str]:
    errs = []
    if len(key) > 253:
        errs.append("must be no more than 253 characters")
    if not _full(_CONFIG_KEY, key):
        errs.append(_regex_error("a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                                 _CONFIG_KEY, "key.name", "KEY_NAME", "key-name"))
    if key == ".":
        errs.append("must not be '.'")
    elif key == "..":
        errs.append("must not be '..'")
    elif key.startswith(".."):
        errs.append("must not start with '..'")
    return errs


def label_causes(labels: Any) -> list[Cause]:
    """metadata.labels: each key a qualified name (optionally prefixed), each value a label value."""
    causes: list[Cause] = []
    for key, value in sorted((labels or {}).items()):
        name = key.rsplit("/", 1)[-1]
        if len(name) > 63 or not _full(_QUALIFIED_NAME, name):
            causes.append(Cause("metadata.labels", "FieldValueInvalid", _regex_error(
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
                "an alphanumeric character", _QUALIFIED_NAME, "MyName", "my.name", "123-abc"), key))
        if not isinstance(value, str):
            continue
        if len(value) > 63:
            causes.append(Cause("metadata.labels", "FieldValueInvalid", "must be no more than 63 characters", value))
        if not _full(_LABEL_VALUE, value):
            causes.append(Cause("metadata.labels", "FieldValueInvalid", _regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
                "must start and end with an alphanumeric character", _LABEL_VALUE, "MyValue", "my_value", "12345"),
                value))
    return causes


def name_causes(name: str, errors: list[str]) -> list[Cause]:
    return [Cause("metadata.name", "FieldValueInvalid", msg, name) for msg in errors]


def _decode(cm: Obj) -> None:
    """What the JSON decoder refuses before validation: a value that is not a string (YAML's ``PORT: 8080``)."""
    for bag in ("data", "binaryData"):
        value = cm.get(bag)
        if value is None:
            continue
        if not isinstance(value, dict):
            go_type = "map[string]string" if bag == "data" else "map[string][]uint8"
            raise ApiError(400, "BadRequest", f'ConfigMap in version "v1" cannot be handled as a ConfigMap: json: '
                           f"cannot unmarshal {_json_kind(value)} into Go struct field ConfigMap.{bag} of type "
                           f"{go_type}")
        for v in value.values():
            if not isinstance(v, str):
                raise ApiError(400, "BadRequest", f'ConfigMap in version "v1" cannot be handled as a ConfigMap: '
                               f"json: cannot unmarshal {_json_kind(v)} into Go struct field ConfigMap.{bag} of type "
                               + ("string" if bag == "data" else "[]uint8"))
    if "immutable" in cm and cm["immutable"] is not None and not isinstance(cm["immutable"], bool):
        raise ApiError(400, "BadRequest", 'ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot '
                       f"unmarshal {_json_kind(cm['immutable'])} into Go struct field ConfigMap.immutable of type bool")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


def validate_configmap(cm: Obj, old: Obj | None) -> None:
    """Create (``old`` None) or update validation of a ConfigMap: a 400 for what cannot be decoded, a 422
    ``Invalid`` with the real server's field paths and words for the rest."""
    _decode(cm)
    meta = cm.get("metadata") or {}
    name = str(meta.get("name", ""))
    causes: list[Cause] = []
    if old is not None and old.get("immutable") is True:
        if cm.get("immutable") is not True:
            causes.append(Cause("immutable", "FieldValueForbidden", "field is immutable when `immutable` is set"))
        if (cm.get("data") or None) != (old.get("data") or None):
            causes.append(Cause("data", "FieldValueForbidden", "field is immutable when `immutable` is set"))
        if (cm.get("binaryData") or None) != (old.get("binaryData") or None):
            causes.append(Cause("binaryData", "FieldValueForbidden", "field is immutable when `immutable` is set"))
    causes += name_causes(name, subdomain_errors(name)) + label_causes(meta.get("labels"))
    size = 0
    for bag in ("data", "binaryData"):
        for key, value in sorted((cm.get(bag) or {}).items()):
            causes += [Cause(f"{bag}[{key}]", "FieldValueInvalid", msg, key) for msg in config_key_errors(key)]
            if bag == "data" and key in (cm.get("binaryData") or {}):
                causes.append(Cause(f"data[{key}]", "FieldValueInvalid", "duplicate of key present in binaryData",
                                    key))
            size += len(value.encode()) if bag == "data" else len(value) * 3 // 4
    if size > MAX_SIZE:
        causes.append(Cause("[]", "FieldValueTooLong", f"must have at most {MAX_SIZE} bytes"))
    if causes:
        raise invalid(RESOURCES["configmaps"], name, causes)


def validate_service_meta(svc: Obj) -> None:
    """A Service's name (a DNS-1035 label: it becomes a DNS name) and labels; the rest is
    :func:`tests.kube.fake_validation.validate_service`."""
    meta = svc.get("metadata") or {}
    name = str(meta.get("name", ""))
    causes = name_causes(name, dns1035_errors(name)) + label_causes(meta.get("labels"))
    if causes:
        raise invalid(RESOURCES["services"], name, causes)


def root_ca(ns: str) -> Obj:
    """The ConfigMap the root CA publisher puts in every namespace."""
    return {"metadata": {"name": ROOT_CA, "namespace": ns,
                         "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to "
                                         "verify the kube-apiserver when using internal endpoints such as the "
                                         "internal service IP or kubernetes.default.svc. No other usage is "
                                         "guaranteed across distributions of Kubernetes clusters."}},
            "data": {"ca.crt": FAKE_CA}}

"""Generate the JSON Schema that jitgate's OCSF export is validated against.

    pip install ocsf-lib==0.10.4          # the OCSF project's own compiler; not a jitgate dependency
    git clone --branch 1.3.0 https://github.com/ocsf/ocsf-schema /tmp/ocsf-schema
    python -m tools.ocsf_schema /tmp/ocsf-schema --commit "$(git -C /tmp/ocsf-schema rev-parse HEAD)" \
        > infra/ocsf/ocsf-1.3.0.schema.json

The schema repository is compiled with ocsf-lib (dictionary, `extends`, `$include`,
attribute overrides), without profiles or extensions: jitgate's events declare none
(`metadata.profiles` is absent), so profile attributes (`osint`, `device`, `cloud`, ...) are
not in effect. From the compiled schema, the classes `broker.audit.ocsf` emits and every
object they reach become JSON Schema (draft 2020-12):

- an attribute whose requirement is `required` is in `required`;
- a class's or object's `constraints` become `anyOf` (`at_least_one`) or `oneOf`
  (`just_one`) of `required`. They are read from the source files along the `extends`
  chain (the nearest definition wins), because ocsf-lib 0.10.4 lets a parent's constraints
  replace the child's (it gives `network_endpoint` the `_entity` pair `name`/`uid`);
- enum attributes (`class_uid`, `activity_id`, `type_uid`, `severity_id`, `status_id`,
  `type_id`, ...) take only their listed values, and an enum's sibling (`activity_name`,
  `status`, ...), when present, the caption of the value (except for Other, 99, whose
  sibling is the source's own word);
- types carry their base type and the dictionary's `regex`, `max_len`, `range` and `values`;
- attributes the schema does not define are refused (`additionalProperties: false`), except
  inside the free-form `object` type (`unmapped`).

The top level dispatches on `class_uid` and pins `metadata.version` to the compiled version,
so an export that claims another version fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from broker.audit.ocsf import CLASSES

_BASE_TYPES = {
    "string_t": {"type": "string"},
    "integer_t": {"type": "integer"},
    "long_t": {"type": "integer"},
    "float_t": {"type": "number"},
    "boolean_t": {"type": "boolean"},
    "json_t": {},
}
OTHER = "99"


def _source_constraints(repo: Path) -> dict[str, dict[str, list[str]] | None]:
    """name -> constraints of every object and event, resolved along `extends` by hand."""
    raw: dict[str, tuple[str | None, dict[str, list[str]] | None]] = {}
    for path in [*sorted((repo / "objects").glob("*.json")), *sorted((repo / "events").rglob("*.json"))]:
        defn = json.loads(path.read_text())
        kind = "object" if path.parent.name == "objects" else "class"
        raw[f"{kind}:{defn['name']}"] = (defn.get("extends"), defn.get("constraints"))

    def resolve(key: str) -> dict[str, list[str]] | None:
        kind = key.split(":", 1)[0]
        while key in raw:
            extends, constraints = raw[key]
            if constraints:
                return constraints
            if not extends:
                return None
            key = f"{kind}:{extends}"
        return None

    return {key: resolve(key) for key in raw}


class _Builder:
    def __init__(self, compiled: dict[str, Any], constraints: dict[str, dict[str, list[str]] | None]) -> None:
        self.compiled = compiled
        self.constraints = constraints
        self.defs: dict[str, Any] = {}
        self._pending: list[str] = []

    def type_ref(self, name: str) -> dict[str, Any]:
        if name == "object":
            return {"type": "object"}  # OCSF's generic object: anything goes (`unmapped`)
        if name in self.compiled["objects"]:
            key = f"object.{name}"
            if key not in self.defs:
                self.defs[key] = None  # reserved; filled by build()
                self._pending.append(name)
            return {"$ref": f"#/$defs/{key}"}
        key = f"type.{name}"
        if key not in self.defs:
            self.defs[key] = self._scalar(name)
        return {"$ref": f"#/$defs/{key}"}

    def _scalar(self, name: str) -> dict[str, Any]:
        if name in _BASE_TYPES:
            out = dict(_BASE_TYPES[name])
        else:
            spec = self.compiled["types"][name]
            out = self._scalar(spec["type"]) if spec.get("type") else {}
        spec = self.compiled["types"].get(name, {})
        if spec.get("regex"):
            out["pattern"] = spec["regex"]
        if spec.get("max_len"):
            out["maxLength"] = spec["max_len"]
        if spec.get("range"):
            out["minimum"], out["maximum"] = spec["range"]
        if spec.get("values") and name != "boolean_t":
            out["enum"] = spec["values"]
        return out

    def attribute(self, attr: dict[str, Any]) -> dict[str, Any]:
        schema = self.type_ref(attr["type"])
        if attr.get("enum"):
            integer = attr["type"] in ("integer_t", "long_t")
            schema = {**schema, "enum": [int(k) if integer else k for k in attr["enum"]]}
        if attr.get("is_array"):
            schema = {"type": "array", "items": schema}
        return schema

    def shape(self, defn: dict[str, Any], constraints: dict[str, list[str]] | None) -> dict[str, Any]:
        attrs = {name: a for name, a in defn["attributes"].items() if not a.get("profile")}
        out: dict[str, Any] = {
            "type": "object",
            "properties": {name: self.attribute(a) for name, a in sorted(attrs.items())},
            "additionalProperties": False,
        }
        required = sorted(name for name, a in attrs.items() if a.get("requirement") == "required")
        if required:
            out["required"] = required
        rules: list[dict[str, Any]] = []
        for kind, names in sorted((constraints or {}).items()):
            keyword = {"at_least_one": "anyOf", "just_one": "oneOf"}[kind]
            rules.append({keyword: [{"required": [n]} for n in names]})
        for name, a in sorted(attrs.items()):
            sibling = a.get("sibling")
            if not a.get("enum") or not sibling or sibling not in attrs or a.get("is_array"):
                continue
            for value, item in sorted(a["enum"].items()):
                if value == OTHER:
                    continue
                rules.append({
                    "if": {"properties": {name: {"const": int(value)}}, "required": [name]},
                    "then": {"properties": {sibling: {"const": item["caption"]}}},
                })
        if rules:
            out["allOf"] = rules
        return out

    def build(self, class_names: list[str]) -> dict[str, Any]:
        for name in class_names:
            self.defs[f"class.{name}"] = self.shape(self.compiled["classes"][name], self.constraints[f"class:{name}"])
        while self._pending:
            name = self._pending.pop()
            self.defs[f"object.{name}"] = self.shape(
                self.compiled["objects"][name], self.constraints[f"object:{name}"]
            )
        return dict(sorted(self.defs.items()))


def generate(compiled: dict[str, Any], repo: Path, *, commit: str) -> dict[str, Any]:
    version = compiled["version"]
    by_uid = {c["uid"]: name for name, c in compiled["classes"].items()}
    classes = [(uid, by_uid[uid]) for uid, *_ in CLASSES]
    defs = _Builder(compiled, _source_constraints(repo)).build([name for _, name in classes])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            f"Generated by tools/ocsf_schema.py from ocsf/ocsf-schema {version} (commit {commit}), "
            "no profiles or extensions. Do not edit by hand."
        ),
        "x-ocsf-version": version,
        "x-ocsf-commit": commit,
        "type": "object",
        "required": ["class_uid", "metadata"],
        "properties": {
            "class_uid": {"enum": [uid for uid, _ in classes]},
            "metadata": {"type": "object", "properties": {"version": {"const": version}}},
        },
        "allOf": [
            {"if": {"properties": {"class_uid": {"const": uid}}}, "then": {"$ref": f"#/$defs/class.{name}"}}
            for uid, name in classes
        ],
        "$defs": defs,
    }


def compile_repo(repo: Path) -> dict[str, Any]:
    from ocsf.compile import Compilation, CompilationOptions  # type: ignore[import-not-found]
    from ocsf.repository import read_repo  # type: ignore[import-not-found]
    from ocsf.schema import to_json  # type: ignore[import-not-found]

    options = CompilationOptions()
    options.profiles = []
    options.extensions = []
    options.set_object_types = False
    compiled: dict[str, Any] = json.loads(to_json(Compilation(read_repo(str(repo), preserve_raw_data=False),
                                                              options).build()))
    return compiled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo", type=Path, help="a checkout of ocsf/ocsf-schema at the version jitgate claims")
    parser.add_argument("--commit", required=True, help="the checkout's commit, recorded in the output")
    args = parser.parse_args(argv)
    schema = generate(compile_repo(args.repo), args.repo, commit=args.commit)
    json.dump(schema, sys.stdout, indent=1, sort_keys=False, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

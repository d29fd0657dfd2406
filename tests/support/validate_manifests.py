"""Validates rendered Kubernetes manifests (a YAML stream on stdin) and prints them as one JSON
array on stdout, for tests/manifests.rs.

Core kinds are checked by kubernetes-validate against the Kubernetes JSON schemas it bundles, in
strict mode (an unknown field is an error, as `kubectl apply`'s server-side field validation
makes it), once for each version given as an argument. Custom resources are not in those
schemas: a kind listed in CUSTOM is checked against the JSON schema in tests/fixtures named
there instead (written from the resource's CRD, strict as well). Any other kind is an error,
so nothing passes unchecked. Problems go to stderr, one line each; the exit status is 1 when
there is any.

Usage: validate_manifests.py K8S_VERSION... < rendered.yaml > rendered.json
"""

import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")

# (apiVersion, kind) -> schema file in tests/fixtures.
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.json",
}


def name_of(doc):
    return "%s/%s" % (doc.get("kind"), (doc.get("metadata") or {}).get("name"))


def problems_of(doc, versions):
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CUSTOM:
        with open(os.path.join(FIXTURES, CUSTOM[key])) as f:
            schema = json.load(f)
        validator = jsonschema.Draft202012Validator(schema)
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in error.path)
            yield "%s (%s schema): %s: %s" % (name_of(doc), CUSTOM[key], path, error.message)
        return
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            yield "%s (Kubernetes %s): %s: %s" % (name_of(doc), version, path, error.message)
        except kubernetes_validate.SchemaNotFoundError:
            yield "%s: no schema for %s in Kubernetes %s, and none in tests/fixtures" % (
                name_of(doc),
                doc.get("apiVersion"),
                version,
            )


def main():
    versions = sys.argv[1:]
    if not versions:
        sys.exit(__doc__)
    docs = [doc for doc in yaml.safe_load_all(sys.stdin) if doc]
    problems = [p for doc in docs for p in problems_of(doc, versions)]
    for problem in problems:
        print(problem, file=sys.stderr)
    json.dump(docs, sys.stdout)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

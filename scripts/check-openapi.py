#!/usr/bin/env python3
"""Validates api/openapi.json against the OpenAPI 3.1 specification (the
e2e test checks that the server answers every operation it lists)."""
import json
import sys

from openapi_spec_validator import validate

with open("api/openapi.json") as f:
    document = json.load(f)
try:
    validate(document)
except Exception as e:  # the validator's errors name the offending path
    print(f"api/openapi.json is not valid OpenAPI: {e}")
    sys.exit(1)
print(f"api/openapi.json: valid OpenAPI {document['openapi']}, {len(document['paths'])} paths")

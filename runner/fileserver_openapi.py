"""The reference file server's OpenAPI 3.0 document, and the patterns and limits it states.

The server (:mod:`analysis.runner.fileserver`) publishes it at ``/openapi.json`` and checks
requests with the same patterns, so the document and the server cannot disagree.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CONVERSATION_ID_RE",
    "FILE_ID_RE",
    "SEARCH_DEFAULT_LIMIT",
    "SEARCH_MAX_LIMIT",
    "SEARCH_TEXT_RE",
    "openapi_document",
]

FILE_ID_RE = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
CONVERSATION_ID_RE = r"^[A-Za-z0-9_]+(-[A-Za-z0-9_]+)*$"
#: A search text holds a character that is not white space. Spelled out (Python's ``str.isspace``
#: set) because ``\S`` differs between Python and the ECMA regexes of OpenAPI: U+0085 is space
#: to one and not the other.
SEARCH_TEXT_RE = r"[^\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
SEARCH_DEFAULT_LIMIT = 20
SEARCH_MAX_LIMIT = 100


def openapi_document() -> dict[str, Any]:
    """The server's OpenAPI 3.0 document: the four routes of the file API, their errors and auth."""
    ref = {"$ref": "#/components/schemas/Error"}
    err = {"description": "error", "content": {"application/json": {"schema": ref}}}
    file_list = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/FileList"}}}}
    file_id = {
        "name": "file_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": FILE_ID_RE, "not": {"enum": ["search"]}},
    }
    conversation = {
        "name": "conversation_id",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": CONVERSATION_ID_RE, "maxLength": 64},
    }

    def op(op_id: str, summary: str, ok: dict[str, Any], params: list[Any], *codes: str) -> dict[str, Any]:
        responses = {"200": {"description": "OK", **ok}, "401": err} | {code: err for code in codes}
        return {
            "get": {"operationId": op_id, "summary": summary, "parameters": params, "responses": responses}
        }

    metadata_props = {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "size": {"type": "integer", "minimum": 0},
        "content_type": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "modified_at": {"type": "string", "format": "date-time"},
        "conversation_id": {"type": "string", "nullable": True},
        "match": {"type": "string", "enum": ["name", "content"]},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "analysis reference file API", "version": "1"},
        "security": [{"bearer": []}],
        "paths": {
            "/api/files": op(
                "listFiles", "Metadata of all files, or one conversation's", file_list, [conversation], "400"
            ),
            "/api/files/search": op(
                "searchFiles",
                "Files whose name or text content holds every word of q",
                file_list,
                [
                    {
                        "name": "q",
                        "in": "query",
                        "required": True,
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 1000,
                            "pattern": SEARCH_TEXT_RE,
                        },
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": SEARCH_MAX_LIMIT,
                            "default": SEARCH_DEFAULT_LIMIT,
                        },
                    },
                    conversation,
                ],
                "400",
            ),
            "/api/files/{file_id}": op(
                "getFileMetadata",
                "Metadata of one file",
                {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/FileMetadata"}}}},
                [file_id],
                "400",
                "404",
            ),
            "/api/files/{file_id}/content": op(
                "getFileContent",
                "The raw bytes of one file",
                {"content": _content_media()},
                [file_id],
                "400",
                "404",
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "FileMetadata": {
                    "type": "object",
                    "required": ["id", "name", "size", "content_type", "created_at"],
                    "properties": metadata_props,
                },
                "FileList": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"$ref": "#/components/schemas/FileMetadata"}}
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
            },
        },
    }


def _content_media() -> dict[str, Any]:
    """Media types of ``/content``: a JSON file is any JSON value, everything else raw bytes.

    A JSON file is served as ``application/json``, so typing all content as a binary string
    made a JSON array or object "violate" the document (schemathesis' stateful phase saw it).
    """
    raw = {"schema": {"type": "string", "format": "binary"}}
    return {"application/json": {"schema": {}}, "*/*": raw}

"""/openapi.json and /docs, generated from the protos."""

from __future__ import annotations

import re


def _refs(node, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                out.add(v)
            else:
                _refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _refs(v, out)
    return out


async def test_openapi_document_is_well_formed_31(gw):
    r = await gw.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    schemas = doc["components"]["schemas"]
    # Every reference resolves.
    for ref in _refs(doc, set()):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[-1] in schemas, ref
    op_ids = []
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        in_path = set(re.findall(r"{([^}]+)}", path))
        for method, op in item.items():
            assert method in {"get", "post", "put", "patch", "delete"}
            op_ids.append(op["operationId"])
            declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert declared == in_path, (path, method)
            assert all(p["required"] for p in op["parameters"] if p["in"] == "path")
            assert set(op["responses"]) == {"200", "default"}
            assert op["responses"]["default"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }
            assert isinstance(op["security"], list) and "x-mall-access" in op
    assert len(op_ids) == len(set(op_ids))


async def test_openapi_has_the_member_routes_and_not_the_internal_ones(gw):
    doc = (await gw.get("/openapi.json")).json()
    ops = {op["operationId"]: (path, method, op) for path, item in doc["paths"].items() for method, op in item.items()}
    assert "AddGrowth" not in ops and "SendReach" not in ops
    assert "AddGrowthRequest" not in str(doc["components"]["schemas"].keys())

    path, method, get_member = ops["GetMember"]
    assert (path, method) == ("/v1/members/{member}", "get")
    assert get_member["summary"] == "Gets a member."  # from the proto comment
    assert get_member["security"] == [{"bearerAuth": []}]
    assert get_member["x-mall-access"] == {
        "public": False, "member": True, "staff_roles": ["admin", "operator", "guide"], "service": True,
    }
    assert get_member["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/mall.members.v1.Member"
    }

    path, method, login = ops["LoginWithWechat"]
    assert (path, method) == ("/v1/members:loginWithWechat", "post")
    assert login["security"] == [] and login["x-mall-access"]["public"] is True
    body = login["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/mall.members.v1.LoginWithWechatRequest"}

    path, method, record = ops["RecordSubscriptions"]
    assert path == "/v1/members/{member}/subscriptions:record"
    body = record["requestBody"]["content"]["application/json"]["schema"]
    assert "acceptedTemplateIds" in body["properties"]
    assert body["properties"]["parent"] == {"description": "Set by the path; a value sent here is ignored."}

    _, _, list_members = ops["ListMembers"]
    query = {p["name"]: p for p in list_members["parameters"] if p["in"] == "query"}
    assert set(query) == {"pageSize", "pageToken", "tier", "tag", "firstTouchChannelCode"}
    assert query["pageSize"]["schema"] == {"type": "integer", "format": "int32", "minimum": 0}  # mall.api.v1.field

    _, _, update = ops["UpdateMember"]
    # A partial update: the Member's fields, none required, output-only ones left out (they are refused).
    patch_body = update["requestBody"]["content"]["application/json"]["schema"]
    assert "nickname" in patch_body["properties"] and "growthValue" not in patch_body["properties"]
    assert "required" not in patch_body and patch_body["additionalProperties"] is False
    assert "updateMask" in {p["name"] for p in update["parameters"]}
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT"
    }


async def test_schemas_follow_the_proto3_json_mapping(gw):
    schemas = (await gw.get("/openapi.json")).json()["components"]["schemas"]
    member = schemas["mall.members.v1.Member"]
    props = member["properties"]
    assert member["description"].startswith("A member")
    # Not REQUIRED: null is the default value in proto3 JSON, so the schema admits it.
    # int64: a string in answers, a string or a number in requests (proto3 JSON).
    assert props["growthValue"]["type"] == ["string", "integer", "null"] and props["growthValue"]["format"] == "int64"
    assert props["growthValue"]["readOnly"] is True  # OUTPUT_ONLY
    assert props["createTime"]["type"] == ["string", "null"] and props["createTime"]["format"] == "date-time"
    assert props["gender"]["anyOf"] == [{"$ref": "#/components/schemas/mall.members.v1.Gender"}, {"type": "null"}]
    assert props["nickname"]["maxLength"] == 32  # (mall.api.v1.field) = {max_len: 32}
    assert props["attributes"]["type"] == ["object", "null"] and props["attributes"]["additionalProperties"] == {
        "type": "string"
    }
    assert props["birthday"]["anyOf"][0]["$ref"] == "#/components/schemas/google.type.Date"
    assert set(schemas["google.type.Date"]["properties"]) == {"year", "month", "day"}
    assert schemas["mall.members.v1.Gender"]["enum"] == ["GENDER_UNSPECIFIED", "GENDER_MALE", "GENDER_FEMALE"]
    tier = schemas["mall.members.v1.Tier"]
    # REQUIRED, as far as the services can tell: growthThreshold 0 (the base tier) is the same as absent.
    assert set(tier["required"]) == {"displayName"}
    assert schemas["mall.members.v1.ChannelCode"]["properties"]["tags"] == {
        "type": ["array", "null"], "items": {"type": "string"}, "description": schemas["mall.members.v1.ChannelCode"][
            "properties"]["tags"]["description"],
    }
    assert schemas["mall.members.v1.Staff"]["properties"]["password"]["writeOnly"] is True
    error = schemas["Error"]["properties"]["error"]
    assert set(error["required"]) == {"code", "status", "message", "details"}


async def test_docs_page_is_self_contained_html(gw):
    r = await gw.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "GetMember" in html and "/v1/members/{member}" in html and "Gets a member." in html
    assert "staff: admin, operator, guide" in html and "public: no token" in html
    assert "AddGrowth" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing loaded from elsewhere

"""schemathesis hooks for tests/tests/openapi.rs.

- ModelsLab's key travels in the JSON body (`key`), which OpenAPI cannot say as a
  security scheme: every ModelsLab body gets the test key.
- Input images are real: a string in an image URL field becomes the test image
  server's PNG link (or, where the field is base64, that PNG's base64), an upload
  becomes its bytes, so that the success answers are generated and checked too.
- Valid sizes, step counts and sample counts are brought down to the smallest the
  operation accepts, and absent sizes are given, so that each generated request costs
  the tiny model milliseconds on a CPU, not seconds: the documents' bounds are held to
  the parsers by the edge's unit tests (edge/src/openapi.rs), here every answer is held
  to its document.
"""

import base64
import copy
import os

import schemathesis

KEY = os.environ["SDGATE_TEST_KEY"]
IMAGE_URL = os.environ["SDGATE_TEST_IMAGE_URL"]
with open(os.environ["SDGATE_TEST_PNG"], "rb") as f:
    PNG = f.read()
PNG_B64 = base64.b64encode(PNG).decode()

# Image fields by how they carry the image: a URL (ModelsLab: base64 with "base64": "yes"),
# base64, or an upload.
URL_FIELDS = ("inputImage", "init_image", "image", "mask_image", "control_image", "controlnet_image")
BASE64_FIELDS = ("image", "controlnet_image")


JSON_TYPES = (str, int, float, bool, type(None), list, dict)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def smallest_side(path):
    # HolmesAI's sides are multiples of 64 from 128; the others' multiples of 8 from 64.
    return 128 if "/v1/images/" in path else 64


@schemathesis.hook
def map_case(context, case):
    timeout = (case.headers or {}).get("x-timeout-ms")
    if isinstance(timeout, str) and timeout.isdigit() and int(timeout) >= 1:
        case.headers["x-timeout-ms"] = str(max(int(timeout), 60000))
    if not isinstance(case.body, dict):
        return case
    # The edits keep a body as valid or invalid as it was generated: a case meant to
    # be refused stays one (schemathesis expects its 4xx).
    schema = next((b for b in case.operation.body if b.media_type == case.media_type), None)
    body = copy.deepcopy(case.body)
    edit(body, case.operation.path)
    if schema is None or valid(schema, body) == valid(schema, case.body):
        case.body = body
        # The case is what it was (checked above, uploads included, which schemathesis'
        # own re-check would call invalid strings): keep its meaning as generated.
        case._record_starting_state()
    return case


def valid(schema, body):
    # Uploads (bytes, schemathesis' Binary) are beyond the validator: a file part is
    # valid as any string.
    return schema.is_valid(plain(body))


def plain(v):
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v if type(v) in JSON_TYPES else ""


def edit(body, path):
    if path.startswith("/api/"):
        body["key"] = KEY
    real_images(body, path)
    side = smallest_side(path)
    sized = False
    for name in ("width", "height"):
        v = body.get(name)
        if is_int(v) and side <= v <= 2048:
            body[name] = side
        sized |= name in body
    if not sized and "size" not in body and "image" not in body:
        body["width"] = body["height"] = side
    if isinstance(body.get("size"), str) and "x" in body["size"]:
        body["size"] = f"{side}x{side}"
    low = 10 if "/v1/images/" in path else 1
    for name in ("steps", "num_inference_steps"):
        v = body.get(name)
        if is_int(v) and low <= v <= 100:
            body[name] = low
    if is_int(body.get("samples")) and 1 <= body["samples"] <= 4:
        body["samples"] = 1


def real_images(body, path):
    if path.endswith("/v1/images/control"):
        if "image" in body:
            body["image"] = PNG
        return
    if path == "/v1/image/generation":
        for name in BASE64_FIELDS:
            if isinstance(body.get(name), str):
                body[name] = PNG_B64
        return
    if path.startswith("/api/") or "getSDXLImage" in path:
        flag = body.get("base64")
        as_base64 = flag in (True, 1) or str(flag).strip().lower() in ("yes", "true", "1")
        for name in URL_FIELDS:
            if isinstance(body.get(name), str) and body[name]:
                body[name] = PNG_B64 if as_base64 else IMAGE_URL

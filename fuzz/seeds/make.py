"""Writes the fuzzers' starting inputs into fuzz/corpus/TARGET/seed-*: one valid
request per dialect and path, multipart bodies, tiny PNG/JPEG/WebP images, URLs,
addresses and allowed-hosts entries, a spin.toml, contract JSON. AFL++ mutates from
these; what it keeps is merged in beside them (scripts/fuzz). Needs Pillow."""

import base64
import io
import json
import pathlib

from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent / "corpus"


def img(fmt, size=(8, 6), mode="RGB", **kw):
    out = io.BytesIO()
    Image.new(mode, size, (200, 100, 50) if mode == "RGB" else (200, 100, 50, 128)).save(out, fmt, **kw)
    return out.getvalue()


PNG = img("PNG")
PNG_ALPHA = img("PNG", mode="RGBA")
JPEG = img("JPEG")
WEBP = img("WEBP")
WEBP_LOSSLESS = img("WEBP", lossless=True)
B64 = base64.b64encode(PNG).decode()


def write(target, name, data):
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


def request(path, content_type, body):
    body = json.dumps(body).encode() if isinstance(body, dict) else body
    return f"{path}\n{content_type}\n".encode() + body


def form(boundary, parts):
    out = b""
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode()
        out += value if isinstance(value, bytes) else value.encode()
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


J = "application/json"
dialects = {
    "appypie-txt": request("/getImage/v1/getSDXLImage", J, {"prompt": "a cat", "size": "512x512", "num_inference_steps": 20, "seed": 4}),
    "appypie-img": request("/img2img/getImage/v1/getSDXLImage", J, {"prompt": "a cat", "inputImage": "data:image/png;base64," + B64, "strength": 0.5}),
    "appypie-url": request("/img2img/getImage/v1/getSDXLImage", J, {"prompt": "a cat", "inputImage": "https://example.com/dog.png"}),
    "holmes-gen": request("/svc/v1/images/generate", J, {"prompt": "a cat", "width": 512, "height": 512, "steps": 20, "cfg_scale": 7}),
    "holmes-ctl": request("/svc/v1/images/control", "multipart/form-data; boundary=XyZ",
                          form("XyZ", [("prompt", "add an apple", None), ("steps", "30", None), ("image", PNG, "t.png")])),
    "hyperbolic": request("/v1/image/generation", J, {"model_name": "SDXL1.0-base", "prompt": "a horse", "height": 1024, "width": 1024, "backend": "auto", "image": B64, "strength": 0.4}),
    "modelslab-txt": request("/api/v6/images/text2img", J, {"key": "k", "prompt": "a cat", "width": "512", "height": "512", "samples": "1", "scheduler": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}),
    "modelslab-img": request("/api/v6/images/img2img", J, {"key": "k", "prompt": "a cat", "init_image": "https://example.com/a.png", "strength": 0.7, "webhook": "https://example.com/hook", "track_id": 3}),
    "modelslab-v7": request("/api/v7/images/text-to-image", J, {"key": "k", "prompt": "a cat", "aspect_ratio": "16:9", "model_id": "sdxl"}),
    "modelslab-ent": request("/api/v1/enterprise/realtime/text2img", J, {"key": "k", "prompt": "x", "safety_checker": "no", "enhance_prompt": "yes"}),
    "modelslab-fetch": request("/api/v6/images/fetch/123", J, {"key": "k"}),
}
for name, data in dialects.items():
    write("dialects", name, data)

write("multipart", "request", b"multipart/form-data; boundary=b0\n" + form("b0", [("request", json.dumps({"model": "m", "prompt": "p"}), None), ("init_image", PNG, "i.png")]))
write("multipart", "rfc8187", b'multipart/form-data; BOUNDARY="q"\n'
      + b"--q\r\nContent-Disposition: FORM-DATA; NAME=image; filename*=UTF-8''%E2%82%AC.png\r\nContent-Type: image/png\r\n\r\n" + PNG + b"\r\n--q--\r\n")

for name, data in {"png": PNG, "png-alpha": PNG_ALPHA, "jpeg": JPEG, "webp": WEBP, "webp-lossless": WEBP_LOSSLESS, "base64": ("data:image/png;base64," + B64).encode()}.items():
    write("image", name, data)

for i, text in enumerate([
    "https://example.com/dog.png", "http://127.0.0.1:8081/x", "https://[::ffff:10.0.0.1]/a", "https://[64:ff9b:1::a00:1]/",
    "https://user:pw@example.com/", "ftp://example.com/", "169.254.169.254", "2002:c000:0204::1", "fe80::1%eth0",
    "https://*.example.com https://a.example.com/x", "*://*:* http://10.0.0.1:80/", "http://10.0.0.0/8:8000..9000 http://10.1.2.3:8500/",
    "https://a.com, http://localhost:3000", "self", "https://xn--bcher-kva.example/",
]):
    write("address", f"{i:02}", text)

write("spin_toml", "app", """spin_manifest_version = 2
[application]
name = "edge"
[variables]
api_keys = { default = "", secret = true }
inference_url = { required = true }
[[trigger.http]]
route = "/..."
component = "edge"
[component.edge]
source = "edge.wasm"
allowed_outbound_hosts = ["https://*:*", "{{ inference_url }}"]
key_value_stores = ["default"]
[component.edge.variables]
inference_url = "{{ inference_url }}"
""")

write("contract_json", "request", json.dumps({"model": "m", "prompt": "p", "negative_prompt": None, "width": 64, "height": 64, "steps": 4, "guidance": 5.0, "seed": 42, "samples": 1, "scheduler": "DDIMScheduler", "karras": None, "algorithm_type": None, "init_image": {"image": B64, "strength": 0.6}}))
write("contract_json", "result", json.dumps({"model": "m", "steps": 4, "guidance": 1.5, "scheduler": "s", "images": [{"png": B64, "seed": 9, "width": 8, "height": 8}], "timings": {"queued_ms": 0, "prepare_ms": 0, "denoise_ms": 0, "decode_ms": 0, "total_ms": 1}}))

"""Every image call of ModelsLab's official Python SDK (modelslab-py, pinned by
scripts/modelslab-clients), against the edge. Prints one JSON object: call name ->
{"ok": final answer} or {"error": the SDK's exception}, on the last line (the
SDK's realtime text-to-image prints its answer itself). A call answered
"processing" is fetched with the SDK's own fetch, as its users do.

    modelslab_sdk.py EDGE_ORIGIN KEY INIT_IMAGE_URL
"""
import asyncio
import json
import sys
import warnings

warnings.simplefilter("ignore")

from modelslab_py.core.apis.community import Community
from modelslab_py.core.apis.realtime import Realtime
from modelslab_py.core.client import Client
from modelslab_py.providers import BFLProvider, BytePlusProvider, GoogleProvider
from modelslab_py.providers.bfl.schemas import Flux2ProSchema, FluxPro11Schema
from modelslab_py.providers.byteplus.schemas import SeeDreamT2ISchema
from modelslab_py.providers.google.schemas import Imagen4Schema
from modelslab_py.schemas.community import (Flux2Dev, Image2Image, QwenText2Image, Text2Image,
                                            ZImageTurbo)
from modelslab_py.schemas.realtime import RealtimeImage2ImageSchema, RealtimeText2ImageSchema

edge, key, image = sys.argv[1:4]
results = {}


def client():
    c = Client(api_key=key, fetch_retry=60, fetch_timeout=1)
    # The SDK has no base-URL setting: its clients keep it in this attribute.
    c.base_url = edge + "/api/"
    return c


def call(name, api, make):
    try:
        answer = make()
        if answer.get("status") == "processing":
            answer = api.fetch(str(answer["id"]))
        results[name] = {"ok": answer}
    except Exception as e:  # the SDK raises on any status but 200
        results[name] = {"error": str(e)}


small = dict(width=64, height=64, num_inference_steps=2, seed=5)
c = client()
for enterprise in (False, True):
    tag = "enterprise_" if enterprise else ""
    api = Community(client=c, enterprise=enterprise)
    call(tag + "text_to_image", api,
         lambda: api.text_to_image(Text2Image(prompt="a red apple", **small)))
    call(tag + "image_to_image", api, lambda: api.image_to_image(
        Image2Image(prompt="a red apple", init_image=image, strength=0.5, **small)))
    call(tag + "z_image_turbo", api, lambda: api.z_image_turbo(ZImageTurbo(prompt="x")))
    call(tag + "flux_2_dev", api, lambda: api.flux_2_dev(Flux2Dev(prompt="x")))
    if enterprise:
        call("enterprise_qwen_text_to_image", api, lambda: api.qwen_text_to_image(
            QwenText2Image(prompt="a red apple", width=64, height=64)))
    rt = Realtime(client=c, enterprise=enterprise)
    call(tag + "realtime_text_to_image", rt, lambda: rt.text_to_image(
        RealtimeText2ImageSchema(prompt="a red apple", num_inference_steps=2, seed=5)))
    call(tag + "realtime_image_to_image", rt, lambda: rt.image_to_image(
        RealtimeImage2ImageSchema(prompt="a red apple", init_image=image, strength=0.5,
                                  num_inference_steps=2, seed=5)))

# Provider calls name their providers' models, which this server does not have.
bfl, google, byteplus = BFLProvider(client=c), GoogleProvider(client=c), BytePlusProvider(client=c)
call("bfl_flux_pro_11", None, lambda: bfl.flux_pro_11(FluxPro11Schema(prompt="x", width=64, height=64)))
call("bfl_flux_2_pro", None, lambda: bfl.flux_2_pro(Flux2ProSchema(prompt="x", width=64, height=64)))
call("google_imagen_4", None, lambda: google.imagen_4(Imagen4Schema(prompt="x", aspect_ratio="1:1")))
call("byteplus_seedream_t2i", None,
     lambda: byteplus.seedream_t2i(SeeDreamT2ISchema(prompt="x", width=64, height=64)))


async def with_async_client():
    async with Client(api_key=key, fetch_retry=60, fetch_timeout=5) as ac:
        ac.base_url = edge + "/api/"
        api = Community(client=ac)
        answer = await api.async_text_to_image(Text2Image(prompt="a red apple", **small))
        if answer.get("status") == "processing":
            answer = await api.async_fetch(str(answer["id"]))
        results["async_text_to_image"] = {"ok": answer}


try:
    asyncio.run(with_async_client())
except Exception as e:
    results["async_text_to_image"] = {"error": repr(e)}
print(json.dumps(results))

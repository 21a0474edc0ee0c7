"""`kernel serve --plugins hello`: GET /hello greets; POST /hello/{model} runs a model."""

import msgspec
import numpy as np
from litestar import Request, get, post
from litestar.params import FromPath

import kernel


class HelloConfig(msgspec.Struct):
    greeting: str = "hello"


@kernel.hookimpl
def kernel_add_options(group: kernel.OptionGroup) -> None:
    group.add_option("--hello-greeting", help="what GET /hello says")


@kernel.hookimpl
def kernel_config_section() -> type:
    return HelloConfig


@get("/hello")
async def hello(request: Request) -> dict:
    k: kernel.Kernel = request.app.state["kernel"]
    return {"greeting": k.config.section("hello").greeting, "models": sorted(k.registry.names())}


@post("/hello/{model:str}", status_code=200)  # an answer, not a created resource
async def run(request: Request, model: FromPath[str], data: list[float]) -> dict:
    k: kernel.Kernel = request.app.state["kernel"]
    outputs = await k.registry.infer(model, {"x": np.asarray([data], dtype=np.float32)})
    return {name: value.tolist() for name, value in outputs.items()}


@kernel.hookimpl
def kernel_routes(kernel: kernel.Kernel) -> list:
    return [hello, run]

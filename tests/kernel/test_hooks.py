"""Every hook, exercised the way a plugin author would: a plugin registered in-process,
the app built by the kernel, requests through Litestar's test client."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import msgspec
import pytest
from litestar import Request, Router, get
from litestar.params import FromPath
from litestar.testing import TestClient

import kernel
from kernel import hookspecs
from kernel.app import build_parser, load_plugins

REPO = Path(__file__).resolve().parents[2]


def make(tmp_path, plugins: dict, **options):
    return kernel.create_kernel(
        [], extra=plugins, options={"kernel": {"state_dir": str(tmp_path / "state"), **options}}
    )


class GreetConfig(msgspec.Struct):
    name: str = "world"
    times: int = 1


class Greet:
    @kernel.hookimpl
    def kernel_add_options(self, group):
        group.add_option("--greet-name", "--name", help="who to greet")
        group.add_option("--greet-times", type=int)

    @kernel.hookimpl
    def kernel_config_section(self):
        return GreetConfig


def test_hook_kernel_add_options(tmp_path):
    parser = build_parser(load_plugins([], {"greet": Greet()}))
    assert parser.parse(["--name", "ada", "--greet-times", "2"])["greet"] == {"name": "ada", "times": 2}
    assert parser.parse([]) == {}  # options not given stay unset, so lower layers apply
    help_text = parser.argparser.format_help()
    assert re.search(r"greet \(plugin from this process\):\s*\n\s*--greet-name NAME, --name NAME", help_text)

    class Unprefixed:
        @kernel.hookimpl
        def kernel_add_options(self, group):
            group.add_option("--colour")

    with pytest.raises(kernel.StartupError, match="--colour must start with --bad-<key>"):
        build_parser(load_plugins([], {"bad": Unprefixed()}))

    class SameAlias:
        @kernel.hookimpl
        def kernel_add_options(self, group):
            group.add_option("--other-name", "--name")

    with pytest.raises(kernel.StartupError, match="--name is claimed by both plugin 'greet' and plugin 'other'"):
        build_parser(load_plugins([], {"greet": Greet(), "other": SameAlias()}))

    class OwnDefault:
        @kernel.hookimpl
        def kernel_add_options(self, group):
            group.add_option("--own-times", type=int, default=3)

    with pytest.raises(kernel.StartupError, match="may not set default; it belongs in the config section's Struct"):
        build_parser(load_plugins([], {"own": OwnDefault()}))


def test_hook_kernel_config_section(tmp_path):
    k = make(tmp_path, {"greet": Greet()})
    assert k.config.section("greet") == GreetConfig()
    k = kernel.create_kernel([], extra={"greet": Greet()}, environ={"KERNEL_GREET_TIMES": "3"},
                             options={"greet": {"name": "ada"}})
    assert k.config.section("greet") == GreetConfig(name="ada", times=3)
    with pytest.raises(kernel.StartupError, match="environment variable KERNEL_GREET_TIMES: invalid value for times"):
        kernel.create_kernel([], extra={"greet": Greet()}, environ={"KERNEL_GREET_TIMES": "many"})
    with pytest.raises(kernel.StartupError, match="option --greet-times: invalid value"):
        kernel.create_kernel([], extra={"greet": Greet()}, options={"greet": {"times": "x"}})


@get("/shout/{word:str}", sync_to_thread=False)
def shout(word: FromPath[str]) -> dict:
    if word == "boom":
        raise RuntimeError("secret internals /etc/passwd")
    if word == "missing":
        raise kernel.NotFound("no such word")
    return {"word": word.upper()}


class Shout:
    @kernel.hookimpl
    def kernel_routes(self, kernel):
        return [Router("/oip-like", route_handlers=[shout],
                       exception_handlers=kernel.error_handlers(lambda status, msg: {"error": msg})),
                shout]


def test_hook_kernel_routes(tmp_path):
    k = make(tmp_path, {"shout": Shout()})
    with TestClient(k.app) as client:
        assert client.get("/shout/hi").json() == {"word": "HI"}
        # the kernel's error shape by default, the plugin's own on its router
        assert client.get("/shout/missing").json() == {"detail": "no such word"}
        assert client.get("/oip-like/shout/missing").json() == {"error": "no such word"}
        crash = client.get("/oip-like/shout/boom")
        assert crash.status_code == 500 and crash.json() == {"error": "Internal server error"}
        assert "passwd" not in crash.text and "Traceback" not in crash.text
        assert client.get("/no/such/route").json() == {"detail": "Not Found"}
        paths = client.get("/openapi.json").json()["paths"]
        assert "/shout/{word}" in paths and "/oip-like/shout/{word}" in paths and "/-/health" in paths

    class Again:
        @kernel.hookimpl
        def kernel_routes(self, kernel):
            return [shout]

    with pytest.raises(kernel.StartupError, match=r"route GET /shout/\{word:str\} is claimed by both plugin 'shout'"):
        _ = make(tmp_path, {"shout": Shout(), "again": Again()}).app


class Listing(kernel.ModelSource):
    def __init__(self, name: str, models: list[str]) -> None:
        self.name, self.models = name, models

    def scan(self):
        return [kernel.ModelSpec(name=m, qualified=f"{self.name}.{m}", source=self.name,
                                 path=f"/nowhere/{m}.xyz", format="xyz") for m in self.models]


def test_hook_kernel_model_sources(tmp_path):
    class Sources:
        @kernel.hookimpl
        def kernel_model_sources(self, kernel):
            return [Listing("alpha", ["shared", "only_a"]), Listing("beta", ["shared", "bad name"])]

    k = make(tmp_path, {"sources": Sources()})
    with TestClient(k.app) as client:
        models = {m["name"]: m for m in client.get("/-/models").json()}
    assert set(models) == {"alpha.shared", "alpha.only_a", "beta.shared"}  # "bad name" is refused
    assert models["alpha.only_a"]["state"] == "unavailable"
    # a plain name is shown only where it reaches this model
    assert (models["alpha.only_a"]["plain_name"], models["alpha.shared"]["plain_name"]) == ("only_a", None)
    assert "no backend for xyz models" in models["alpha.only_a"]["error"]
    assert k.registry.get("only_a").name == "alpha.only_a"
    with pytest.raises(kernel.Conflict, match="use one of alpha.shared, beta.shared"):
        k.registry.get("shared")


def test_two_model_sources_with_one_name_stop_startup_naming_the_plugin(tmp_path):
    class Twice:
        @kernel.hookimpl
        def kernel_model_sources(self, kernel):
            return [Listing("alpha", ["one"]), Listing("alpha", ["two"])]

    with pytest.raises(kernel.StartupError, match=r"twice.*two model sources are named 'alpha'"):
        make(tmp_path, {"twice": Twice()})


@pytest.mark.parametrize(("returned", "message"), [
    (lambda: Listing("alpha", ["one"]), "kernel_model_sources must return a list, not Listing"),
    (lambda: ["alpha"], "kernel_model_sources returned a str, not a kernel.ModelSource"),
])
def test_a_hook_returning_the_wrong_thing_stops_startup_naming_the_plugin(tmp_path, returned, message):
    class Wrong:
        @kernel.hookimpl
        def kernel_model_sources(self, kernel):
            return returned()

    with pytest.raises(kernel.StartupError, match=rf"plugin 'wrong' \(entry point <in-process>\): {message}"):
        make(tmp_path, {"wrong": Wrong()})


class TokenHeader:
    """A plugin whose protocol sends a token in a header of its own."""

    @kernel.hookimpl
    def kernel_authenticate(self, request, kernel):
        token = request.headers.get("token")
        if token is None:
            return None
        if token != "let-me-in":
            raise kernel_module.Unauthorized("bad token")
        return kernel_module.Principal(subject="zoo-user", scopes=frozenset({"read"}), issuer="tokenheader")

    @kernel.hookimpl
    def kernel_routes(self, kernel):
        @get("/th/read", guards=[kernel_module.requires("read")], sync_to_thread=False)
        def read(request: Request) -> dict:
            return {"user": request.user.subject}

        @get("/th/write", guards=[kernel_module.requires("write")], sync_to_thread=False)
        def write() -> dict:
            return {}

        return [read, write]


kernel_module = kernel


class Other:
    @kernel.hookimpl
    def kernel_routes(self, kernel):
        @get("/other", guards=[kernel_module.requires("read")], sync_to_thread=False)
        def other(request: Request) -> dict:
            return {"user": request.user.subject}

        return [other]


def test_hook_kernel_authenticate(tmp_path):
    k = make(tmp_path, {"other": Other(), "th": TokenHeader()}, token_secret="s" * 40)
    with TestClient(k.app) as client:
        assert client.get("/th/read", headers={"token": "let-me-in"}).json() == {"user": "zoo-user"}
        bad = client.get("/th/read", headers={"token": "nope"})
        assert bad.status_code == 401 and bad.json() == {"detail": "bad token"}
        none = client.get("/th/read")
        assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
        assert client.get("/th/write", headers={"token": "let-me-in"}).status_code == 403
        # the header credential is that plugin's alone: another plugin's route ignores it
        assert client.get("/other", headers={"token": "let-me-in"}).status_code == 401
        # the kernel's bearer tokens work on both
        jwt = k.auth.tokens.issue("svc", ["read"], ttl=60)
        assert client.get("/other", headers={"Authorization": f"Bearer {jwt}"}).json() == {"user": "svc"}
        assert client.get("/th/read", headers={"Authorization": f"Bearer {jwt}"}).json() == {"user": "svc"}


class Lifecycle:
    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events = name, events

    @kernel.hookimpl
    async def kernel_startup(self, kernel):
        self.events.append(f"start {self.name} models={len(kernel.registry.models())}")

    @kernel.hookimpl
    def kernel_shutdown(self, kernel):
        self.events.append(f"stop {self.name}")


def test_hook_kernel_startup(tmp_path):
    events: list[str] = []
    k = make(tmp_path, {"one": Lifecycle("one", events), "two": Lifecycle("two", events)})
    with TestClient(k.app) as client:
        assert client.get("/-/ready").status_code == 200
        assert events == ["start one models=0", "start two models=0"]

    class Failing:
        @kernel.hookimpl
        async def kernel_startup(self, kernel):
            raise OSError("port 8081 in use")

    k = make(tmp_path, {"failing": Failing()})
    with pytest.raises(kernel.StartupError, match=r"plugin 'failing' \(entry point <in-process>\) failed to start: OSError: port 8081 in use"):
        import asyncio
        asyncio.run(k.startup())


def test_hook_kernel_shutdown(tmp_path):
    events: list[str] = []
    k = make(tmp_path, {"one": Lifecycle("one", events), "two": Lifecycle("two", events)})
    with TestClient(k.app):
        pass
    assert events[-2:] == ["stop two", "stop one"]


def test_backends_start_before_plugins_and_stop_after_them(tmp_path):
    # A plugin warming a model up in its own startup gets a backend that has its config.
    events: list[str] = []

    class Configured(kernel.Backend):
        formats = frozenset({"cfg"})

        def load(self, spec):
            raise NotImplementedError

        @kernel.hookimpl
        def kernel_startup(self, kernel):
            events.append("start backend")

        @kernel.hookimpl
        def kernel_shutdown(self, kernel):
            events.append("stop backend")

    k = kernel.create_kernel([], extra={"one": Lifecycle("one", events)}, backends={"configured": Configured},
                             options={"kernel": {"state_dir": str(tmp_path / "state")}})
    with TestClient(k.app):
        pass
    assert events == ["start backend", "start one models=0", "stop one", "stop backend"]


def _specs() -> list[str]:
    return [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("kernel_")]


def test_every_hook_has_a_test_named_for_it():
    names = {name for name in globals() if name.startswith("test_hook_")}
    assert {f"test_hook_{spec}" for spec in _specs()} <= names


def test_plugin_guide_documents_every_hook_with_its_signature():
    spec = importlib.util.spec_from_file_location("build_hook_reference", REPO / "docs" / "build_hook_reference.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    guide = builder.GUIDE.read_text()
    assert builder.render(guide) == guide, "docs/plugins.md is stale: run python docs/build_hook_reference.py"
    for name in _specs():
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### `{name}({params})`" in guide


@pytest.mark.anyio
async def test_rescan_of_one_source_leaves_the_others_as_they_were(tmp_path):
    alpha, beta = Listing("alpha", ["a1"]), Listing("beta", ["b1"])

    class Sources:
        @kernel.hookimpl
        def kernel_model_sources(self, kernel):
            return [alpha, beta]

    k = make(tmp_path, {"sources": Sources()})
    await k.registry.rescan()
    alpha.models, beta.models = ["a1", "a2"], []
    await k.registry.rescan("alpha")
    assert sorted(k.registry.names()) == ["a1", "a2", "alpha.a1", "alpha.a2", "b1", "beta.b1"]
    await k.registry.rescan()
    assert "beta.b1" not in k.registry.names()


def test_debug_logging_traces_hook_calls(tmp_path, caplog):
    caplog.set_level("DEBUG", logger="kernel.hooks")
    _ = make(tmp_path, {"greet": Greet()}, log_level="debug").app
    # one line per call, naming the plugin, and only for plugins that have the hook
    routes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kernel_routes ")]
    assert [line.split(" -> ")[0] for line in routes] == ["kernel_routes of kernel.builtins.internal"]


def test_two_plugins_with_same_named_handlers_get_distinct_openapi_ids(tmp_path):
    def health_plugin(path: str):
        @get(path, sync_to_thread=False)
        def health() -> dict:
            return {}

        class Plugin:
            @kernel.hookimpl
            def kernel_routes(self, kernel):
                return [health]

        return Plugin()

    k = make(tmp_path, {"alpha": health_plugin("/health"), "beta": health_plugin("/beta/health")})
    with TestClient(k.app) as client:
        answer = client.get("/openapi.json")
        assert answer.status_code == 200
        ids = [op["operationId"] for item in answer.json()["paths"].values() for op in item.values()]
        assert len(ids) == len(set(ids))
        assert {"AlphaHealthHealth", "KernelHealthHealth"} <= set(ids)

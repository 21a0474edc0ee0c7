"""The `kernel` command, run as a user runs it: a subprocess, and servers on loopback."""

from __future__ import annotations

import json
import os
import stat

import httpx
import jwt
import pytest

import kernel
from tests.conftest import run_kernel

pytestmark = pytest.mark.usefixtures("test_plugins")

STRONG = "x" * 40


def test_version(tmp_path):
    result = run_kernel(["--version"], tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("kernel 0.")


def test_unknown_plugin_exits_2_naming_it_and_the_installed_ones(tmp_path):
    result = run_kernel(["serve", "--plugins", "hello,nosuch"], tmp_path)
    assert result.returncode == 2
    assert "unknown plugin 'nosuch'" in result.stderr
    assert "hello" in result.stderr and "failstart" in result.stderr


def test_plugin_that_fails_to_import_names_plugin_entry_point_and_cause(tmp_path):
    result = run_kernel(["serve", "--plugins", "broken"], tmp_path)
    assert result.returncode == 1
    assert "plugin 'broken' (entry point kernel_testplugins.broken) failed to import" in result.stderr
    assert "ModuleNotFoundError" in result.stderr
    assert "Traceback" not in result.stderr


def test_plugin_that_fails_to_start_names_plugin_entry_point_and_cause(tmp_path):
    result = run_kernel(["serve", "--plugins", "failstart", "--port", "0"], tmp_path)
    assert result.returncode == 1
    assert "plugin 'failstart' (entry point kernel_testplugins.failstart) failed to start" in result.stderr
    assert "db.invalid is unreachable" in result.stderr


def test_unknown_option_exits_2(tmp_path):
    result = run_kernel(["serve", "--plugins", "hello", "--no-such-option"], tmp_path)
    assert result.returncode == 2
    assert "--no-such-option" in result.stderr


def test_option_of_a_plugin_not_loaded_says_so(tmp_path):
    result = run_kernel(["serve", "--plugins", "failstart", "--hello-greeting", "hi"], tmp_path)
    assert result.returncode == 2
    assert "belongs to plugin 'hello', which is not loaded" in result.stderr


def test_two_plugins_claiming_one_route_is_a_startup_error(tmp_path):
    result = run_kernel(["serve", "--plugins", "hello,clash"], tmp_path)
    assert result.returncode == 1
    assert "route GET /hello is claimed by both plugin 'hello'" in result.stderr
    assert "plugin 'clash' (entry point kernel_testplugins.clash)" in result.stderr


def test_help_groups_every_installed_plugins_options(tmp_path):
    result = run_kernel(["serve", "--help"], tmp_path)
    assert result.returncode == 0
    assert "--hello-greeting" in result.stdout
    assert "hello (plugin from kernel-hello 0.1.0)" in result.stdout
    assert "--model-dir" in result.stdout
    # a plugin that cannot be imported is named, not skipped
    assert "broken" in result.stdout and "ModuleNotFoundError" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "config", "expected"),
    [
        (["--port", "http"], {}, None, "argument --port"),
        ([], {"KERNEL_PORT": "eighty"}, None, "environment variable KERNEL_PORT: invalid value for port"),
        ([], {}, "port = 'eighty'\n", "key port: invalid value for port"),
        ([], {}, "[hello]\ngreeting = 3\n", "[hello] greeting: invalid value for greeting"),
        ([], {}, "[nosuch]\nx = 1\n", "unknown section [nosuch]"),
        ([], {}, "portt = 1\n", "unknown key 'portt'"),
        ([], {}, "[hello]\ngreetin = 'x'\n", "[hello]; known: greeting"),
        ([], {}, "max_body_size = '5X'\n", "key max_body_size: invalid value for max_body_size: invalid size '5X'"),
        ([], {"KERNEL_MAX_BODY_SIZE": "lots"}, None, "KERNEL_MAX_BODY_SIZE: invalid value for max_body_size"),
        (["--max-body-size", "0"], {}, None, "argument --max-body-size: invalid size value"),
        ([], {}, "port = \n", "not valid TOML"),
    ],
)
def test_bad_config_names_where_it_came_from(tmp_path, args, env, config, expected):
    if config is not None:
        (tmp_path / "kernel.toml").write_text(config)
        args = [*args, "--config", str(tmp_path / "kernel.toml")]
    result = run_kernel(["serve", "--plugins", "hello", *args], tmp_path, **env)
    assert result.returncode != 0
    assert expected in result.stderr


def test_sizes_and_lists_are_written_alike_in_every_layer(tmp_path):
    (tmp_path / "kernel.toml").write_text('model_dir = "a, b"\nmax_model_bytes = "2G"\n')
    config = kernel.create_kernel([], config_file=str(tmp_path / "kernel.toml"), environ={"KERNEL_MAX_BODY_SIZE": "16MiB"},
                                  options={"kernel": {"state_dir": str(tmp_path / "state")}}).config.kernel
    assert (config.model_dir, config.max_model_bytes, config.max_body_size) == (["a", "b"], 2 << 30, 16 << 20)


def test_config_layers_defaults_file_environment_options(tmp_path, serve):
    (tmp_path / "kernel.toml").write_text('plugins = ["hello"]\n[hello]\ngreeting = "from-file"\n')
    config = ["--config", str(tmp_path / "kernel.toml")]
    assert httpx.get(serve(*config).url + "/hello").json()["greeting"] == "from-file"
    server = serve(*config, KERNEL_HELLO_GREETING="from-env")
    assert httpx.get(server.url + "/hello").json()["greeting"] == "from-env"
    server = serve(*config, "--hello-greeting", "from-option", KERNEL_HELLO_GREETING="from-env")
    assert httpx.get(server.url + "/hello").json()["greeting"] == "from-option"


def test_plugins_lists_plugins_backends_and_storage_with_import_status(tmp_path):
    result = run_kernel(["plugins", "--json"], tmp_path)
    assert result.returncode == 0
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.stdout)}
    assert rows[("plugin", "hello")]["distribution"] == "kernel-hello"
    assert rows[("plugin", "hello")]["version"] == "0.1.0"
    assert rows[("backend", "npy")]["entry_point"] == "kernel_hello.backend:NpyBackend"
    assert rows[("storage", "file")]["imports"] is True
    assert rows[("plugin", "broken")]["imports"] is False
    assert "ModuleNotFoundError" in rows[("plugin", "broken")]["error"]
    table = run_kernel(["plugins"], tmp_path).stdout
    assert "kernel-hello" in table and "error: ModuleNotFoundError" in table


def test_models_shows_name_source_backend_and_state(tmp_path):
    import numpy as np

    models = tmp_path / "models"
    models.mkdir()
    np.save(models / "double.npy", 2 * np.eye(3))
    (models / "odd.tflite").write_bytes(b"not a model")
    result = run_kernel(["models", "--plugins", "hello", "--model-dir", str(models), "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["dir.double"]["backend"] == "npy"
    assert rows["dir.double"]["state"] == "available"
    assert rows["dir.double"]["source"] == "dir"
    table = run_kernel(["models", "--plugins", "hello", "--model-dir", str(models)], tmp_path).stdout
    assert "dir.double" in table and "reads npy" in table


def test_a_broken_or_blocked_backend_is_left_out_and_a_bad_name_is_reported(tmp_path):
    import numpy as np

    # a distribution of a broken backend and a plugin with an unusable name, on the path
    dist = tmp_path / "site" / "kernel_extras-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kernel-extras\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kernel.backends]\nbrokenbe = no_such_module:Backend\n\n"
                                           "[kernel.plugins]\nBad-Name = kernel_hello\n")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    rows = {r["name"]: r for r in json.loads(run_kernel(["plugins", "--json"], tmp_path, **env).stdout)}
    assert "ModuleNotFoundError" in rows["brokenbe"]["error"]
    assert rows["Bad-Name"]["error"] == "plugin name 'Bad-Name' must match [a-z][a-z0-9_]*"
    helped = run_kernel(["serve", "--help"], tmp_path, **env)
    assert helped.returncode == 0 and "--hello-greeting" in helped.stdout
    assert "plugin Bad-Name" in helped.stdout and "backend brokenbe" in helped.stdout

    models = tmp_path / "models"
    models.mkdir()
    np.save(models / "double.npy", 2 * np.eye(3))
    served = run_kernel(["models", "--plugins", "hello", "--model-dir", str(models), "--json"], tmp_path, **env)
    assert served.returncode == 0, served.stderr
    assert "backend 'brokenbe' (entry point no_such_module:Backend) is left out" in served.stderr
    assert json.loads(served.stdout)[0]["backend"] == "npy"
    blocked = run_kernel(["models", "--plugins", "hello", "--block-plugins", "npy", "--model-dir", str(models),
                          "--json"], tmp_path, **env)
    assert blocked.returncode == 0, blocked.stderr
    assert json.loads(blocked.stdout) == []  # no installed backend reads .npy files now

    # A blocked backend is not even imported: one whose import has side effects (here it
    # leaves a file behind) or hangs is kept out too.
    (tmp_path / "site" / "noisy_backend.py").write_text(
        "import os, pathlib\npathlib.Path(os.environ['IMPORT_MARKER']).touch()\nclass Backend: ...\n")
    noisy = tmp_path / "site" / "kernel_noisy-0.1.dist-info"
    noisy.mkdir()
    (noisy / "METADATA").write_text("Metadata-Version: 2.1\nName: kernel-noisy\nVersion: 0.1\n")
    (noisy / "entry_points.txt").write_text("[kernel.backends]\nnoisy = noisy_backend:Backend\n")
    marker = tmp_path / "imported"
    quiet = run_kernel(["models", "--plugins", "hello", "--block-plugins", "brokenbe,noisy", "--model-dir",
                        str(models), "--json"], tmp_path, IMPORT_MARKER=str(marker), **env)
    assert quiet.returncode == 0, quiet.stderr
    assert not marker.exists()
    assert "ModuleNotFoundError" not in quiet.stderr
    assert json.loads(quiet.stdout)[0]["backend"] == "npy"
    helped = run_kernel(["serve", "--block-plugins", "brokenbe,noisy", "--help"], tmp_path,
                        IMPORT_MARKER=str(marker), **env)
    assert helped.returncode == 0 and "--hello-greeting" in helped.stdout
    assert "backend brokenbe" not in helped.stdout and not marker.exists()
    run_kernel(["models", "--plugins", "hello", "--model-dir", str(models)], tmp_path, IMPORT_MARKER=str(marker), **env)
    assert marker.exists()  # the same run without blocking imports it


def test_a_list_in_an_environment_variable_may_have_spaces_after_commas(tmp_path):
    import numpy as np

    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / f"{folder}.npy", np.eye(3))
    listed = f"{tmp_path / 'one'}, {tmp_path / 'two'}"
    result = run_kernel(["models", "--plugins", "hello", "--json"], tmp_path, KERNEL_MODEL_DIR=listed)
    assert result.returncode == 0, result.stderr
    assert {r["name"] for r in json.loads(result.stdout)} == {"dir.one", "dir.two"}


def test_token_is_signed_with_the_servers_secret(tmp_path, serve):
    home = tmp_path / "home"  # the same home (and so state dir) as the server's
    minted = run_kernel(["token", "--scope", "secure", "--ttl", "10m", "--subject", "ci"], home)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "ci" and 590 <= claims["exp"] - claims["iat"] <= 600
    # the generated secret is kept with mode 0600 and the server uses it
    secret_file = home / "state" / "kernel" / "token_secret"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    server = serve("--plugins", "secure")
    answer = httpx.get(server.url + "/secure/whoami", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.json() == {"subject": "ci"}


@pytest.mark.parametrize("secret", ["change-me", "secret", "short-but-not-known"])
# hello uses no auth, but the kernel's own admin routes take tokens signed with the secret
@pytest.mark.parametrize("plugin", ["secure", "hello"])
def test_weak_secret_is_refused_at_startup(tmp_path, secret, plugin):
    result = run_kernel(["serve", "--plugins", plugin, "--token-secret", secret, "--port", "0"], tmp_path)
    assert result.returncode == 1
    assert "token secret" in result.stderr and "--token-secret" in result.stderr


def test_token_reads_the_servers_config_file_with_its_plugin_tables(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text('plugins = ["hello"]\ntoken_secret = "%s"\n[hello]\ngreeting = "hi"\n[onnxruntime]\n'
                      "intra_op_threads = 1\n" % ("s" * 40))
    minted = run_kernel(["token", "--scope", "admin", "--config", str(config)], tmp_path)
    assert minted.returncode == 0, minted.stderr
    jwt.decode(minted.stdout.strip(), "s" * 40, algorithms=["HS256"])


def test_a_request_cannot_forge_a_log_line(tmp_path, serve):
    server = serve("--plugins", "hello")
    forged = "2026-01-01 00:00:00,000 INFO    [-] kernel.auth: forged"
    httpx.get(server.url + "/nosuch%0a" + forged.replace(" ", "%20"))
    server.stop()
    lines = server.output().splitlines()
    assert not any(line.startswith(forged) for line in lines)
    assert any("/nosuch\\n" + forged in line for line in lines)


def test_serve_real_http_with_example_plugin_and_json_logs(tmp_path, serve):
    import numpy as np

    models = tmp_path / "models"
    models.mkdir()
    np.save(models / "double.npy", 2 * np.eye(3))
    server = serve("--plugins", "hello", "--model-dir", str(models), "--log-format", "json",
                   "--token-secret", STRONG)
    answer = httpx.post(server.url + "/hello/double", json=[1, 2, 3], headers={"X-Request-ID": "req-42"})
    assert answer.status_code == 200 and answer.json() == {"y": [[2.0, 4.0, 6.0]]}
    assert answer.headers["x-request-id"] == "req-42"
    assert httpx.post(server.url + "/hello/double", json=[1, 2]).status_code == 400
    server.stop()
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert any(line["request_id"] == "req-42" and "loaded model dir.double" in line["message"] for line in lines)
    assert STRONG not in server.output()


def test_port_in_use_is_a_clear_error_before_plugins_start(tmp_path, serve):
    server = serve("--plugins", "hello")
    result = run_kernel(["serve", "--plugins", "failstart", "--port", str(server.port)], tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in result.stderr
    assert "failed to start" not in result.stderr  # no plugin was started


def test_a_client_holding_a_connection_does_not_keep_a_stopping_server_alive(tmp_path, serve):
    import socket
    import time

    server = serve("--plugins", "hello", "--shutdown-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", server.port)) as held:
        # a request whose body never finishes arriving keeps its connection busy
        held.sendall(b"POST /hello/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[1")
        time.sleep(0.2)
        started = time.monotonic()
        server.stop()  # SIGTERM; Server.stop kills only after 10 s
        assert time.monotonic() - started < 5
        assert server.proc.returncode in (0, -15)  # uvicorn ends by re-raising the signal

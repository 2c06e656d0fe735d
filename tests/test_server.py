"""`txt2img serve` as a real process on a free loopback port, driven with the `webuiapi`
client, raw HTTP and `txt2img --server`: A1111's routes and error shapes, the pixels
against the command line's, the security rules and limits, and requests in flight
(interrupt, a client that goes away, SIGTERM, a full queue) at a step the paused server
announces."""

from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import requests
import webuiapi
from a1111 import parse_generation_parameters, read_infotext
from addon_files import write_embedding, write_kohya_lora
from paused import _default_sigint, process_env
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from served import ServerProcess
from typer.testing import CliRunner

from txt2img.cli import app as cli_app
from txt2img.errors import ExitCode
from txt2img.model.schedulers import SCHEDULERS
from txt2img.options import RECORDED_OPTIONS

DEMO = Path(__file__).resolve().parent.parent / "txt2img" / "model" / "demo_model"
SIDE = 64
STEPS = 4
USER, PASSWORD = "alice", "s3cret:with colon"
ORIGIN = "http://localhost:3000"
# The A1111 request and the command line's options for the same picture.
REQUEST = {"prompt": "a red circle", "steps": STEPS, "width": SIDE, "height": SIDE,
           "cfg_scale": 7, "sampler_name": "Euler a"}  # fmt: skip
LOCAL = ("-m", "demo", "--steps", STEPS, "-W", SIDE, "-H", SIDE, "--guidance", 7,
         "--scheduler", "euler-a", "-q")  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory, models) -> dict[str, Path]:
    """A models folder with the tiny SD 1.x model; a LoRA folder with a LoRA for the demo
    model."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(models["sd1"], root / "models" / "tiny-sd1")
    write_kohya_lora(DEMO, root / "loras" / "red-style.safetensors", seed=3)
    # An embedding made for another family: the demo's text encoder is 64 wide.
    write_embedding(root / "embeddings" / "widerword.safetensors", dim=96)
    return {"models": root / "models", "loras": root / "loras", "embeddings": root / "embeddings"}


@pytest.fixture(scope="module")
def server(folders):
    served = ServerProcess(
        "-m", "demo", "--models-dir", folders["models"], "--lora-dir", folders["loras"],
        "--embeddings-dir", folders["embeddings"], "--max-batch", 4,
        "--models-memory", 0.001,  # one model at a time
        "--client-timeout", 2,
    )  # fmt: skip
    yield served
    assert served.stop() == 0, served.log()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, np.ndarray]:
    """Seeds 100 to 131 drawn alone (-b 1) by the command line, by seed."""
    out = tmp_path_factory.mktemp("alone")
    done = txt2img("a red circle", *LOCAL, "--seed", 100, "-N", 32, "-o", out)
    assert done.returncode == 0, done.stderr
    return {int(p.name.split("-")[1]): pixels(p) for p in out.glob("*.png")}


def txt2img(*args, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "txt2img", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env=process_env(**env))  # fmt: skip


def pixels(source) -> np.ndarray:
    """An image's or a PNG file's RGB values."""
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("RGB"), dtype=np.int16)
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def api(served: ServerProcess, **auth) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=served.port, **auth)


def post(served: ServerProcess, route: str, body, **kwargs) -> requests.Response:
    return requests.post(f"{served.url}/sdapi/v1/{route}", json=body, timeout=120, **kwargs)


def raw(served: ServerProcess, method: str, path: str, headers: dict, body: bytes = b""):
    """A request exactly as written, headers and all: (status, headers, JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for key, value in headers.items():
        connection.putheader(key, value)
    connection.endheaders(body or None)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), json.loads(data) if data else None


def a1111_shape(answer: dict, detail_part: str) -> None:
    assert set(answer) == {"error", "detail", "body", "errors"}, answer
    assert detail_part in answer["detail"], answer


# --- The A1111 API, as its clients use it -------------------------------------------------


def test_webuiapi_lists_models_samplers_options_and_progress(server):
    client = api(server)
    titles = [model["title"] for model in client.get_sd_models()]
    assert titles[0] == "demo_model" and any("tiny-sd1" in title for title in titles)
    names = [sampler["name"] for sampler in client.get_samplers()]
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "PLMS", "UniPC", "LCM"} <= set(names)
    assert [s["name"] for s in client.get_schedulers()] == ["automatic", "uniform", "karras"]
    assert client.util_get_current_model() == "demo_model"
    progress = client.get_progress()
    assert progress["state"]["job_count"] == 0 and type(progress["state"]["job_count"]) is int
    loras = client.get_loras()
    assert [lora["name"] for lora in loras] == ["red-style"]
    assert loras[0]["path"] == "red-style.safetensors"  # never the server's own path
    answers = {route: requests.get(f"{server.url}/sdapi/v1/{route}", timeout=60).json()
               for route in ("scripts", "embeddings", "sd-vae", "upscalers")}  # fmt: skip
    assert answers["scripts"] == {"txt2img": [], "img2img": []}
    assert set(answers["embeddings"]["loaded"]) == {"widerword"}
    assert answers["sd-vae"] == [] and answers["upscalers"][0]["name"] == "None"
    for route in ("refresh-checkpoints", "refresh-loras", "refresh-embeddings"):
        assert post(server, route, {}).status_code == 200
    assert [lora["name"] for lora in client.get_loras()] == ["red-style"]


def test_api_images_equal_the_command_lines(server, tmp_path):
    """webuiapi's full payload, two images in one call, against `txt2img -b 2`; the PNGs
    carry A1111's parameters, and png-info reads them back."""
    result = api(server).txt2img(**REQUEST, seed=5, batch_size=2)
    done = txt2img("a red circle", *LOCAL, "--seed", 5, "-N", 2, "-b", 2, "-o", tmp_path)
    assert done.returncode == 0, done.stderr
    local = sorted(tmp_path.glob("*.png"))
    assert len(result.images) == 2
    for image, path in zip(result.images, local, strict=True):
        assert np.array_equal(pixels(image), pixels(path))
    info = result.info
    assert (info["seed"], info["all_seeds"], info["sampler_name"]) == (5, [5, 6], "Euler a")
    fields = parse_generation_parameters(info["infotexts"][1])
    assert (fields["Seed"], fields["Steps"], fields["Sampler"]) == ("6", str(STEPS), "Euler a")
    assert result.parameters["seed"] == 5 and result.parameters["batch_size"] == 2
    assert result.images[1].info["parameters"] == info["infotexts"][1]
    read = api(server).png_info(result.images[1]).json
    assert read["info"] == info["infotexts"][1] and read["parameters"]["Seed"] == "6"


def test_randn_source_gpu_draws_an_nvidia_cards_noise_as_rng_nv_does(server, tmp_path):
    body = {**REQUEST, "seed": 8, "override_settings": {"randn_source": "GPU"}}
    answer = post(server, "txt2img", body)
    assert answer.status_code == 200, answer.text
    done = txt2img("a red circle", *LOCAL, "--seed", 8, "--rng", "nv", "-o", tmp_path)
    assert done.returncode == 0, done.stderr
    image = decoded(answer.json()["images"][0])
    assert np.array_equal(pixels(image), pixels(Path(done.stdout.strip())))
    assert ", RNG: NV," in answer.json()["info"]
    wrong = post(server, "txt2img", {**body, "override_settings": {"randn_source": "TPU"}})
    assert wrong.status_code == 400 and "randn_source" in wrong.text


@pytest.mark.parametrize("model", ["tiny-sd1", "demo_model"])
def test_every_scheduler_is_redrawn_by_the_api_from_a1111s_reading(
    server, folders, model, tmp_path
):
    """An image drawn with each scheduler (and the model's own) by the command line; its
    infotext read by A1111's reader, defaults filled in; those fields posted as A1111's
    clients post them: the same pixels."""
    location = "demo" if model == "demo_model" else folders["models"] / model
    lines = [f"a red circle --scheduler {name}" for name in SCHEDULERS] + ["a red circle"]
    (tmp_path / "prompts.txt").write_text("\n".join(lines) + "\n")
    done = CliRunner().invoke(cli_app, [
        "-f", str(tmp_path / "prompts.txt"), "-m", str(location), "--seed", "3", "--steps", "3",
        "-W", str(SIDE), "-H", str(SIDE), "-q", "-o", str(tmp_path / "local"),
    ])  # fmt: skip
    assert done.exit_code == 0, done.stderr
    for name, line in zip([*SCHEDULERS, None], done.stdout.splitlines(), strict=True):
        path = Path(line)
        fields = read_infotext(Image.open(path).text["parameters"])
        assert fields["Model"] == model
        answer = post(server, "txt2img", {
            "prompt": fields["Prompt"], "negative_prompt": fields["Negative prompt"],
            "steps": int(fields["Steps"]), "sampler_name": fields["Sampler"],
            "scheduler": fields["Schedule type"], "cfg_scale": float(fields["CFG scale"]),
            "seed": int(fields["Seed"]), "width": int(fields["Size-1"]),
            "height": int(fields["Size-2"]),
            "override_settings": {"sd_model_checkpoint": fields["Model"],
                                  "CLIP_stop_at_last_layers": int(fields["Clip skip"])},
        })  # fmt: skip
        assert answer.status_code == 200, (name, answer.text)
        image = decoded(answer.json()["images"][0])
        assert np.array_equal(pixels(image), pixels(path)), name
        assert image.info["parameters"] == Image.open(path).text["parameters"]


def test_api_draws_a_seed_for_minus_one_and_n_iter_images(server):
    answer = post(server, "txt2img", {**REQUEST, "seed": -1, "n_iter": 2}).json()
    info = json.loads(answer["info"])
    assert len(answer["images"]) == 2 and info["seed"] >= 0
    assert info["all_seeds"] == [info["seed"], info["seed"] + 1]
    assert answer["parameters"]["seed"] == -1  # A1111 echoes the request


def test_options_switch_the_model_and_ignore_unknown_keys(server):
    client = api(server)
    tiny = next(m["title"] for m in client.get_sd_models() if "tiny-sd1" in m["title"])
    try:
        assert post(server, "options", {"sd_model_checkpoint": tiny, "x": 1}).json() is None
        assert client.util_get_current_model() == tiny
        info = post(server, "txt2img", {**REQUEST, "seed": 1}).json()["info"]
        assert json.loads(info)["sd_model_name"] == "tiny-sd1"
        server.wait_for(r"unloading demo_model \(--models-memory\)")  # least recently used
    finally:  # the other tests expect the default model
        client.util_set_model("demo_model")
    assert client.util_get_current_model() == "demo_model"
    server.wait_for(r"unloading tiny-sd1 \(--models-memory\)")
    missing = post(server, "options", {"sd_model_checkpoint": "../../etc/passwd"})
    assert missing.status_code == 404
    a1111_shape(missing.json(), "not found")


def test_a_lora_tag_uses_the_servers_lora_folder(server, folders, reference, tmp_path):
    prompt = "a red circle <lora:red-style:0.8>"
    answer = post(server, "txt2img", {**REQUEST, "prompt": prompt, "seed": 100}).json()
    done = txt2img(prompt, *LOCAL, "--seed", 100, "--lora-dir", folders["loras"], "-o", tmp_path)
    assert done.returncode == 0, done.stderr
    (local,) = tmp_path.glob("*.png")
    assert np.array_equal(pixels(decoded(answer["images"][0])), pixels(local))
    assert not np.array_equal(pixels(local), reference[100])
    # The next request without the tag draws without the LoRA again.
    plain = post(server, "txt2img", {**REQUEST, "seed": 100}).json()
    assert np.array_equal(pixels(decoded(plain["images"][0])), reference[100])


@pytest.mark.parametrize(
    ("change", "status", "detail"),
    [
        ({"sampler_name": "Nope"}, 400, "Sampler not found"),
        ({"steps": 501}, 400, "steps"),
        ({"width": 60}, 400, "multiple of 8"),
        ({"batch_size": 17}, 400, "batch_size"),
        ({"n_iter": 101}, 400, "n_iter"),
        ({"width": 4096, "height": 4096}, 400, "pixels"),
        ({"enable_hr": True}, 400, "not supported"),
        ({"override_settings": {"CLIP_stop_at_last_layers": 99}}, 400, "CLIP_stop"),
        ({"prompt": "(unclosed:1.2 " + "x" * 20_000}, 400, "characters"),
    ],
)
def test_bad_requests_are_refused_in_a1111s_shape(server, change, status, detail):
    answer = post(server, "txt2img", {**REQUEST, **change})
    assert answer.status_code == status
    a1111_shape(answer.json(), detail)


@pytest.mark.parametrize(
    ("route", "body", "detail"),
    [
        ("options", b'{"CLIP_stop_at_last_layers": Infinity}', "whole number"),
        ("options", b'{"CLIP_stop_at_last_layers": NaN}', "whole number"),
        ("options", b'{"emphasis": ["x"]}', "emphasis"),
        ("txt2img", b'{"override_settings": {"emphasis": {}}}', "emphasis"),
        ("png-info", b'{"image": "data:xyz"}', "base64"),
        ("png-info", b'{"image": 5}', "base64"),
    ],
)
def test_odd_values_are_refused_not_crashed_on(server, route, body, detail):
    answer = requests.post(f"{server.url}/sdapi/v1/{route}", data=body, timeout=60,
                           headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 400
    a1111_shape(answer.json(), detail)


def test_a_nan_in_a_whole_number_field_is_a_422_not_a_crash(server):
    """Hostile review, defect 12: it was a 500 with a traceback (the error echoed NaN)."""
    answer = requests.post(f"{server.url}/sdapi/v1/txt2img", data=b'{"width": NaN}', timeout=60,
                           headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 422  # FastAPI's answer, as A1111's, naming the field
    assert [error["loc"] for error in answer.json()["detail"]] == [["body", "width"]]
    assert "Traceback" not in server.log()


def test_png_info_refuses_an_endless_parameters_text_and_reads_a_long_one(server):
    """Hostile review, defect 1: a long last line without a colon made A1111's pattern
    backtrack for hours, on the event loop. Now one pass, off the loop, and bounded."""
    from txt2img.records.read import MAX_INFOTEXT_CHARS

    def png_with(text: str) -> str:
        info = PngInfo()
        info.add_text("parameters", text, zip=True)
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
        return base64.b64encode(buffer.getvalue()).decode()

    long = "a fox\n" + "abc def " * ((MAX_INFOTEXT_CHARS - 100) // 8)  # hours before
    answer = post(server, "png-info", {"image": png_with(long)})
    assert answer.status_code == 200 and answer.json()["parameters"]["Prompt"].startswith("a fox")
    endless = post(server, "png-info", {"image": png_with("a fox\n" + "abc def " * 128_000)})
    assert endless.status_code == 400
    a1111_shape(endless.json(), "more than txt2img reads")
    # Also seen: 63 zTXt chunks of 1 MB each (a 65 KB PNG) made a 64.5 MB answer.
    info = PngInfo()
    for number in range(63):
        info.add_text(f"note{number}", "x" * (1 << 20), zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    assert len(buffer.getvalue()) < 100_000
    many = post(server, "png-info", {"image": base64.b64encode(buffer.getvalue()).decode()})
    assert many.status_code == 400 and len(many.content) < 1000
    a1111_shape(many.json(), "text chunks hold")


def draw_body(**change) -> dict:
    """A request of txt2img's own route, as `txt2img --server` sends it."""
    from txt2img.options import RECORDED_OPTIONS

    values = {option.key: option.default for option in RECORDED_OPTIONS}
    job = {"index": 0, "line": 0, "prompt": "a red circle", "values": {**values, "seed": 1}}
    return {"model": None, "jobs": [job], "batch_size": 1, **change}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"jobs": []}, "jobs"),
        ({"batch_size": None}, "batch_size"),
        ({"batch_size": 10**9}, "batch_size"),
        ({"jobs": [draw_body()["jobs"][0]] * 2}, "same index"),
        ("negative_prompt", "--negative-prompt"),
        ("guidance", "--guidance"),
        ("width", "--max-pixels"),
    ],
)
def test_own_route_refuses_bad_requests_with_a_local_exit_code(server, body, detail):
    if isinstance(body, str):  # one job value made bad
        bad = {"negative_prompt": None, "guidance": 10**400, "width": 4096}[body]
        request = draw_body()
        request["jobs"][0]["values"] |= {body: bad, "height": 4096 if body == "width" else None}
    else:
        request = draw_body(**body)
    answer = requests.post(f"{server.url}/txt2img/v1/draw", json=request, timeout=60)
    assert answer.status_code == 400 and answer.json()["exit_code"] == ExitCode.USAGE
    assert detail in answer.json()["message"]


def test_own_route_bounds_a_requests_prompt_text_and_the_a1111_route_its_nesting(server):
    """Hostile review, defect 6: 16 KB of `(a` took 0.5 s to check, and a request of
    such prompts went on for minutes. Nesting is bounded (parsing is linear), and so is a
    request's prompt text; a request over it is refused before any prompt is parsed."""
    from txt2img.server.wire import MAX_REQUEST_PROMPT_CHARS

    request = draw_body()
    job = request["jobs"][0]
    prompt = "(a" * 8000
    count = MAX_REQUEST_PROMPT_CHARS // len(prompt) + 1
    request["jobs"] = [{**job, "index": n, "prompt": prompt} for n in range(count)]
    answer = requests.post(f"{server.url}/txt2img/v1/draw", json=request, timeout=60)
    assert answer.status_code == 400 and "split the prompts" in answer.json()["hint"]
    answer = post(server, "txt2img", {**REQUEST, "prompt": prompt})
    assert answer.status_code in (400, 422) and "64 deep" in answer.text


def test_an_add_on_that_fails_to_load_is_the_same_model_error_as_in_a_local_run(
    server, folders, tmp_path
):
    """Hostile review, defect 8: a 500 ("unexpected ValueError", with diffusers' unfilled
    {...} placeholders) and exit 1 for a --server client; exit 3 in a local run."""
    answer = post(server, "txt2img", {**REQUEST, "prompt": "a widerword circle"})
    assert answer.status_code == 400
    a1111_shape(answer.json(), "holds vectors of 96 values")
    assert "{" not in answer.json()["errors"]
    here = txt2img("a widerword circle", *LOCAL, "--embeddings-dir", folders["embeddings"],
                   "-o", tmp_path)  # fmt: skip
    there = txt2img("a widerword circle", *LOCAL, "--server", server.url, "-o", tmp_path)
    assert here.returncode == there.returncode == ExitCode.MODEL, there.stderr
    assert "holds vectors of 96 values" in here.stderr and "holds vectors" in there.stderr


def test_checking_a_draw_request_stops_once_its_client_is_gone():
    import json

    from txt2img.server.wire import ClientGone, read_draw_request

    body = json.dumps(draw_body()).encode()
    assert len(read_draw_request(body, 1 << 20)["jobs"]) == 1
    with pytest.raises(ClientGone):
        read_draw_request(body, 1 << 20, client_gone=lambda: True)


def test_body_errors_and_limits(server):
    host = {"Host": f"127.0.0.1:{server.port}", "Content-Type": "application/json"}
    status, _, answer = raw(server, "POST", "/sdapi/v1/txt2img", {**host, "Content-Length": "5"},
                            b"{bad}")  # fmt: skip
    assert status == 422 and isinstance(answer["detail"], list)  # FastAPI's, as in A1111
    status, _, answer = raw(server, "POST", "/sdapi/v1/txt2img",
                            {**host, "Content-Length": str(65 << 20)})  # fmt: skip
    assert status == 413
    a1111_shape(answer, "larger")
    status, _, answer = raw(server, "POST", "/sdapi/v1/txt2img",
                            {**host, "Transfer-Encoding": "chunked"}, b"0\r\n\r\n")  # fmt: skip
    assert status == 411
    assert requests.post(f"{server.url}/sdapi/v1/img2img", json={}, timeout=60).status_code == 501
    assert requests.get(f"{server.url}/sdapi/v1/nowhere", timeout=60).json() == {
        "detail": "Not Found"}  # fmt: skip


def test_host_must_be_the_servers_own_and_no_cors_by_default(server):
    good = {"Host": f"127.0.0.1:{server.port}"}
    assert raw(server, "GET", "/sdapi/v1/progress", good)[0] == 200
    assert raw(server, "GET", "/sdapi/v1/progress", {"Host": f"localhost:{server.port}"})[0] == 200
    status, _, answer = raw(server, "GET", "/sdapi/v1/progress", {"Host": "attacker.example"})
    assert status == 400
    a1111_shape(answer, "host")
    status, headers, _ = raw(server, "GET", "/sdapi/v1/progress", {**good, "Origin": ORIGIN})
    assert status == 403 and not any(k.lower().startswith("access-control") for k in headers)
    same_site = {**good, "Origin": f"http://127.0.0.1:{server.port}"}  # its own pages' origin
    assert raw(server, "GET", "/sdapi/v1/progress", same_site)[0] == 200
    # Without --api-auth an Authorization header is ignored, empty or not.
    for value in ("Basic ", "Basic Zm9vOmJhcg=="):
        assert raw(server, "GET", "/sdapi/v1/progress", {**good, "Authorization": value})[0] == 200


def test_a_web_page_cannot_make_it_draw_or_stop(server):
    """Hostile review, defect 2: a page's text/plain POST (no CORS preflight) drew, and a
    body-less POST to /interrupt stopped the user's job."""
    good = {"Host": f"127.0.0.1:{server.port}"}
    body = json.dumps(REQUEST).encode()
    page = {**good, "Origin": "http://evil.example", "Content-Type": "text/plain",
            "Content-Length": str(len(body))}  # fmt: skip
    status, _, answer = raw(server, "POST", "/sdapi/v1/txt2img", page, body)
    assert status == 403
    a1111_shape(answer, "other web pages")
    for headers in ({**good, "Origin": "http://evil.example"},
                    {**good, "Sec-Fetch-Site": "cross-site"}):  # fmt: skip
        assert raw(server, "POST", "/sdapi/v1/interrupt", headers)[0] == 403
    plain = {**good, "Content-Type": "text/plain", "Content-Length": str(len(body))}
    status, _, answer = raw(server, "POST", "/sdapi/v1/txt2img", plain, body)
    assert status == 415
    a1111_shape(answer, "application/json")
    assert raw(server, "POST", "/sdapi/v1/interrupt", {**good, "Content-Length": "0"})[0] == 200


def test_eight_clients_at_once_each_get_their_own_images(server, reference):
    """8 clients, 4 requests each, at once, on a server that merges requests: all
    answered, each image its seed's, equal to it drawn alone within one level of 255
    (a merged call rounds differently); the server alive afterwards."""
    answers: dict[int, dict] = {}

    def client(number: int) -> None:
        for k in range(4):
            seed = 100 + 4 * number + k
            answers[seed] = post(server, "txt2img", {**REQUEST, "seed": seed}).json()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert sorted(answers) == list(range(100, 132))
    for seed, answer in answers.items():
        assert json.loads(answer["info"])["all_seeds"] == [seed]
        image = decoded(answer["images"][0])
        assert parse_generation_parameters(image.info["parameters"])["Seed"] == str(seed)
        assert np.abs(pixels(image) - reference[seed]).max() <= 1, seed
    assert post(server, "txt2img", {**REQUEST, "seed": 1}).status_code == 200


# --- txt2img --server ---------------------------------------------------------------------


def test_server_client_writes_the_files_a_local_run_writes(server, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle --seed 7\na blue square --steps 3 -n green\n")
    common = ("-f", prompts, "-m", "demo", "-W", SIDE, "-H", SIDE, "--steps", STEPS, "--seed", 1,
              "-q")  # fmt: skip
    local = txt2img(*common, "-o", tmp_path / "local", "--save-steps", 2)
    remote = txt2img(*common, "-o", tmp_path / "remote", "--save-steps", 2,
                     "--server", server.url)  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout.replace("/local/", "/remote/")
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "remote").iterdir()) and len(names) == 4
    for name in names:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "remote" / name).read_bytes()
    again = txt2img(*common, "-o", tmp_path / "remote", "--server", server.url)
    assert again.returncode == ExitCode.OUTPUT and "exist" in again.stderr  # no clobbering
    resumed = txt2img(*common, "-o", tmp_path / "remote", "--resume", "--json",
                      TXT2IMG_SERVER=server.url)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["status"] for line in resumed.stdout.splitlines()] == ["skipped"] * 2
    # --from: the server finds the model the image names; the same picture comes back.
    first = tmp_path / "remote" / next(n for n in names if not n.endswith("-steps.png"))
    # (and the local folder variables are not read: a stale one does not matter)
    again = txt2img("--from", first, "-q", "-o", tmp_path / "again", "--server", server.url,
                    TXT2IMG_LORA_DIR="/no/such/folder")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert np.array_equal(pixels(Path(again.stdout.strip())), pixels(first))


def test_server_from_finds_the_model_by_name_and_loras_by_hash_as_a_local_run(
    server, folders, tmp_path
):
    """An A1111 image whose Model hash the server does not know is drawn with the model
    of its name; a LoRA tag whose file was renamed is found by the image's Lora hashes."""
    from txt2img.model.hashes import lora_hash

    digest = lora_hash(folders["loras"] / "red-style.safetensors")
    image = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", (
        "a red circle <lora:renamed-style:0.8>\nSteps: 3, Sampler: Euler, Schedule type: "
        f"Uniform, CFG scale: 7, Seed: 5, Size: {SIDE}x{SIDE}, Model hash: 0123456789, "
        f'Model: demo_model, RNG: CPU, Lora hashes: "renamed-style: {digest}"'
    ))  # fmt: skip
    Image.new("RGB", (8, 8)).save(image, pnginfo=info)
    remote = txt2img("--from", image, "-q", "-o", tmp_path / "remote", "--server", server.url)
    assert remote.returncode == 0, remote.stderr
    local = txt2img("a red circle <lora:red-style:0.8>", "-m", "demo", "--steps", 3,
                    "--scheduler", "euler", "--guidance", 7, "--seed", 5, "-W", SIDE,
                    "-H", SIDE, "--lora-dir", folders["loras"], "-q",
                    "-o", tmp_path / "local")  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert np.array_equal(pixels(Path(remote.stdout.strip())), pixels(Path(local.stdout.strip())))


def test_an_empty_server_draws_here_whatever_the_variable_says(tmp_path):
    here = txt2img("a red circle", "-m", "demo", "--steps", 1, "--seed", 1, "-W", SIDE, "-H",
                   SIDE, "-q", "--server", "", "-o", tmp_path,
                   TXT2IMG_SERVER="http://127.0.0.1:9")  # fmt: skip
    assert here.returncode == 0, here.stderr
    assert Path(here.stdout.strip()).parent == tmp_path
    refused = txt2img("a fox", "--low-vram", "-o", tmp_path, TXT2IMG_SERVER="http://127.0.0.1:9")
    assert refused.returncode == ExitCode.USAGE and "--server ''" in refused.stderr


def test_a_server_client_that_stops_reading_has_its_run_cancelled(server):
    """Backpressure: 300 noisy 256x256 images (about 60 MB of events) for a client that
    reads nothing. The run waits while its unread events fill the server's bound, then is
    cancelled after --client-timeout: it never draws them all into memory."""
    values = {option.key: option.default for option in RECORDED_OPTIONS}
    values.update(steps=1, width=256, height=256)
    jobs = [{"index": k, "line": 0, "prompt": "a red circle", "values": {**values, "seed": k}}
            for k in range(300)]  # fmt: skip
    body = json.dumps({"jobs": jobs, "model": "tiny-sd1"}).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"POST /txt2img/v1/draw HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        server.wait_for(r"request \d+ \(300 images for txt2img --server\): the client read "
                        r"nothing for 2 s; cancelled")  # fmt: skip
        ended = server.wait_for(r"request \d+ \(300 images for txt2img --server\): \w+")
    assert ended.endswith(": cancelled"), ended
    assert "without completing response" not in server.log()  # dropped on purpose, quietly
    assert requests.get(f"{server.url}/sdapi/v1/progress", timeout=60).status_code == 200


def test_a_redirect_never_carries_the_servers_credentials_elsewhere(tmp_path):
    """Hostile review, defect 5: a 302 to another host received `Authorization: Basic`."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(dict(self.headers))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    class Redirector(Elsewhere):
        def do_POST(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_port}/x")
            self.send_header("Content-Length", "0")
            self.end_headers()

    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    for httpd in (elsewhere, redirector):
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://alice:s3cret@127.0.0.1:{redirector.server_port}"
        done = txt2img("a fox", "--seed", 1, "-o", tmp_path, "--server", url)
    finally:
        for httpd in (elsewhere, redirector):
            httpd.shutdown()
            httpd.server_close()
    assert done.returncode == ExitCode.SERVER and "follows no redirects" in done.stderr
    assert seen == [] and not any(tmp_path.iterdir())


@pytest.fixture
def fake_server():
    """A server on loopback that answers txt2img's draw route with the bytes a test
    gives it, as a broken or hostile server might."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answer: list[bytes] = [b""]

    class Fake(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
            self.wfile.write(answer[0])

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def serve(*events: dict | bytes) -> str:
        answer[0] = b"".join(e if isinstance(e, bytes) else json.dumps(e).encode() + b"\n"
                             for e in events)  # fmt: skip
        return f"http://127.0.0.1:{httpd.server_port}"

    yield serve
    httpd.shutdown()
    httpd.server_close()


def png_text(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_server_client_writes_only_what_the_protocol_promises(
    fake_server, tmp_path, monkeypatch
):
    """Hostile review, defect 3: `done` before every image → exit 0 and nothing written;
    an `error` with exit code 0 → exit 0; a line with no end read whole; a 12000x12000
    PNG for a 32x32 image written as the result."""
    from txt2img.server import client

    runner = CliRunner()
    args = ["a fox", "--seed", "1", "-W", "32", "-H", "32", "-o", str(tmp_path), "--server"]
    record = {"width": 32, "height": 32}
    cases = [
        ((({"event": "done", "failed": 0}),), "neither drawn nor failed"),
        (({"event": "error", "message": "all fine", "exit_code": 0},), "all fine"),
        (({"event": "image", "index": 0, "record": record, "seconds": 1.0,
           "png": png_text(2000, 2000)},), "a 2000x2000 image for a 32x32"),
        ((b'{"event": "info", "message": "' + b"x" * 5000,), "more than"),
    ]  # fmt: skip
    for k, (events, message) in enumerate(cases):
        if k == len(cases) - 1:
            monkeypatch.setattr(client, "MAX_EVENT_BYTES", 4096)  # a line with no end
        result = runner.invoke(cli_app, [*args, fake_server(*events)])
        assert result.exit_code == ExitCode.SERVER, (message, result.stderr)
        assert message in result.stderr
        assert not any(tmp_path.iterdir())


def test_server_client_errors(server, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    args = ("a fox", "--seed", 1, "-o", tmp_path)
    gone = txt2img(*args, "--server", f"http://127.0.0.1:{port}")
    assert gone.returncode == ExitCode.SERVER and "cannot reach the server" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1 and "Traceback" not in gone.stderr
    unknown = txt2img(*args, "-m", "no-such-model", "--server", server.url)
    assert unknown.returncode == ExitCode.MODEL and "no model named" in unknown.stderr
    local_only = txt2img(*args, "--lora", "x.safetensors", "--server", server.url)
    assert local_only.returncode == ExitCode.USAGE and "--lora" in local_only.stderr
    for url in ("ftp://example", "http://[::1", "http://127.0.0.1:port"):
        assert txt2img(*args, "--server", url).returncode == ExitCode.USAGE, url
    checked = txt2img(*args, "-m", "demo", "--clip-skip", 9, "--server", server.url)
    assert checked.returncode == ExitCode.USAGE and "text-encoder layers" in checked.stderr
    assert not any(tmp_path.iterdir())


# --- A paused server with a password: requests in flight ---------------------------------


@pytest.fixture(scope="module")
def guarded():
    """--api-auth and --cors-allow-origins, a queue of 2, and every pipeline call's
    first image paused after step 1 until the test lets it go on."""
    served = ServerProcess("-m", "demo", "--api-auth", f"{USER}:{PASSWORD}",
                           "--cors-allow-origins", ORIGIN, "--queue-size", 2, "--max-batch", 4,
                           pause="step:0:1")  # fmt: skip
    yield served
    served.stop()


AUTH = (USER, PASSWORD)


@pytest.fixture
def paused(guarded):
    """The paused server, settled after the test whatever it did: every request in flight
    interrupted, every paused step let go on, until the server has no work. So a test that
    fails midway never leaves the next one a paused server."""
    yield guarded
    if guarded.process.poll() is not None:
        return
    requests.post(f"{guarded.url}/sdapi/v1/interrupt", auth=AUTH, timeout=60)
    while job_count(guarded):
        guarded.release_pauses()
        threading.Event().wait(0.05)
    guarded.release_pauses()


def in_thread(call, *args, **kwargs) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call(*args, **kwargs)))
    thread.start()
    return thread, result


def job_count(served: ServerProcess) -> int:
    answer = requests.get(f"{served.url}/sdapi/v1/progress", auth=AUTH, timeout=60).json()
    return answer["state"]["job_count"]


def wait_for_job_count(served: ServerProcess, count: int) -> None:
    """The server has taken `count` requests (they are queued before they are answered,
    so this is a condition, not a race)."""
    while job_count(served) != count:
        threading.Event().wait(0.05)


def test_auth_is_needed_on_every_route_and_cors_names_origins(paused):
    url = f"{paused.url}/sdapi/v1"
    for route in ("options", "sd-models", "progress", "samplers", "loras"):
        refused = requests.get(f"{url}/{route}", timeout=60)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith(
            "Basic"
        )
        a1111_shape(refused.json(), "Not authenticated")
    wrong = requests.get(f"{url}/options", auth=(USER, "wrong"), timeout=60)
    assert wrong.status_code == 401
    # Hostile review, defect 11: a header that is not ASCII was a 500 with a traceback.
    status, _, answer = raw(paused, "GET", "/sdapi/v1/options",
                            {"Host": "127.0.0.1", "Authorization": "Basic \xe9t\xe9"})  # fmt: skip
    assert status == 401
    a1111_shape(answer, "Incorrect username or password")
    a1111_shape(wrong.json(), "Incorrect username or password")
    assert requests.post(f"{url}/txt2img", json=REQUEST, timeout=60).status_code == 401
    client = api(paused, username=USER, password=PASSWORD)
    assert client.util_get_current_model() == "demo_model"
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    allowed = requests.options(f"{url}/txt2img", headers=preflight, timeout=60)
    assert allowed.headers.get("access-control-allow-origin") == ORIGIN
    other = requests.options(f"{url}/txt2img", headers={**preflight, "Origin": "http://evil"},
                             timeout=60)  # fmt: skip
    assert "access-control-allow-origin" not in other.headers


def test_interrupt_a_full_queue_and_merged_requests(paused, reference):
    first, answer = in_thread(post, paused, "txt2img", {**REQUEST, "seed": 100}, auth=AUTH)
    paused.wait_for_pause()  # the first request is drawing
    progress = requests.get(f"{paused.url}/sdapi/v1/progress", auth=AUTH, timeout=60).json()
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_step"] == 1
    queued = [in_thread(post, paused, "txt2img", {**REQUEST, "seed": s}, auth=AUTH)
              for s in (101, 102)]  # fmt: skip
    wait_for_job_count(paused, 3)
    full = post(paused, "txt2img", REQUEST, auth=AUTH)
    assert full.status_code == 503 and full.headers["Retry-After"].isdigit()
    a1111_shape(full.json(), "queue is full")
    assert requests.post(f"{paused.url}/sdapi/v1/interrupt", auth=AUTH, timeout=60).json() == {}
    paused.go_on()
    first.join(timeout=120)
    assert answer[0].status_code == 200 and len(answer[0].json()["images"]) == 1
    partial = pixels(decoded(answer[0].json()["images"][0]))  # decoded after 2 of 4 steps
    assert not np.array_equal(partial, reference[100])
    paused.wait_for(r"request \d+ \(txt2img\): interrupted")
    # The two queued requests are drawn in one call, each with its own seed.
    paused.wait_for(r"requests \d+, \d+: 2 images drawn in one pipeline call")
    paused.wait_for_pause()
    paused.go_on()
    for (thread, result), seed in zip(queued, (101, 102), strict=True):
        thread.join(timeout=120)
        image = decoded(result[0].json()["images"][0])
        assert json.loads(result[0].json()["info"])["all_seeds"] == [seed]
        assert np.abs(pixels(image) - reference[seed]).max() <= 1
    assert job_count(paused) == 0


def test_skip_ends_the_call_in_flight_and_draws_the_rest(paused, reference):
    body = {**REQUEST, "seed": 110, "n_iter": 2}  # two calls: images 0 and 1
    request, answer = in_thread(post, paused, "txt2img", body, auth=AUTH)
    paused.wait_for_pause()  # image 0 after step 1
    assert requests.post(f"{paused.url}/sdapi/v1/skip", auth=AUTH, timeout=60).json() == {}
    paused.go_on()
    request.join(timeout=120)
    images = [pixels(decoded(image)) for image in answer[0].json()["images"]]
    assert len(images) == 2 and not np.array_equal(images[0], reference[110])
    assert np.array_equal(images[1], reference[111])


def test_a_client_that_goes_away_has_its_job_cancelled(paused, tmp_path):
    body = json.dumps({**REQUEST, "seed": 1}).encode()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with socket.create_connection(("127.0.0.1", paused.port)) as sock:
        sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nAuthorization: Basic "
                     + token.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)  # fmt: skip
        paused.wait_for_pause()
    paused.wait_for(r"\(txt2img\): the client went away; cancelled")
    paused.go_on()
    wait_for_job_count(paused, 0)
    # A --server run stopped with Ctrl-C: its request is cancelled, no file is left.
    url = f"http://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{paused.port}"
    client = subprocess.Popen(
        [sys.executable, "-m", "txt2img", "a red circle", "--seed", "1", "-W", str(SIDE),
         "-H", str(SIDE), "-o", str(tmp_path), "--server", url],
        stderr=subprocess.PIPE, text=True, env=process_env(), preexec_fn=_default_sigint,
    )  # fmt: skip
    paused.wait_for_pause()
    client.send_signal(signal.SIGINT)
    stderr = client.communicate(timeout=120)[1]
    assert client.returncode == ExitCode.INTERRUPTED, stderr
    paused.wait_for(r"--server\): the client went away; cancelled")
    paused.go_on()
    wait_for_job_count(paused, 0)
    assert not any(tmp_path.iterdir())
    assert job_count(paused) == 0


def test_sigterm_mid_job_answers_and_exits_cleanly():
    """On a server of its own: it ends the server."""
    served = ServerProcess("-m", "demo", "--api-auth", f"{USER}:{PASSWORD}", pause="step:0:1")
    try:
        request, answer = in_thread(post, served, "txt2img", {**REQUEST, "seed": 1}, auth=AUTH)
        served.wait_for_pause()
        served.process.send_signal(signal.SIGTERM)
        served.wait_for("SIGTERM: finishing")
        served.go_on()
        request.join(timeout=120)
        assert answer[0].status_code == 503
        a1111_shape(answer[0].json(), "shutting down")
        assert served.process.wait(timeout=120) == 0
        served.wait_for("txt2img serve: stopped")
    finally:
        served.stop()


# --- Starting ---------------------------------------------------------------------------


def test_serve_refuses_a_network_address_without_a_password():
    done = txt2img("serve", "--host", "0.0.0.0", "-m", "demo")
    assert done.returncode == ExitCode.USAGE and "--api-auth" in done.stderr
    bad = txt2img("serve", "--api-auth", "nopassword")
    assert bad.returncode == ExitCode.USAGE and "USER:PASS" in bad.stderr
    star = txt2img("serve", "--cors-allow-origins", "*")
    assert star.returncode == ExitCode.USAGE


def test_a_port_in_use_is_said_before_the_model_loads(server):
    """Also seen in the hostile review: the port was taken only after minutes of loading.
    A model that cannot load shows which came first: exit 3 before, exit 2 now."""
    done = txt2img("serve", "-m", "no-such/model", "--port", server.port, HF_HUB_OFFLINE="1")
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert f"cannot listen on 127.0.0.1:{server.port}" in done.stderr


def test_a_request_being_parsed_never_stalls_the_others():
    """The png-info body is read in a worker thread: while it is held there (the pause
    point), the event loop still answers, so a hostile PNG or body stalls no one."""
    served = ServerProcess("-m", "demo", pause="parse:/sdapi/v1/png-info")
    try:
        request, answer = in_thread(post, served, "png-info", {"image": "bm90IGEgcG5n"})
        served.wait_for_pause()
        assert requests.get(f"{served.url}/sdapi/v1/progress", timeout=60).status_code == 200
        served.go_on()
        request.join(timeout=120)
        assert answer[0].status_code == 400
    finally:
        served.stop()


def test_a_draw_request_whose_client_goes_is_not_checked_further():
    served = ServerProcess("-m", "demo", pause="parse:/txt2img/v1/draw")
    try:
        body = json.dumps(draw_body()).encode()
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
        connection.request("POST", "/txt2img/v1/draw", body,
                           {"Content-Type": "application/json"})  # fmt: skip
        served.wait_for_pause()
        connection.close()  # the client goes while its request is checked
        served.wait_for("client went away while it was checked")
        served.go_on()
        served.wait_for("the draw request of a client that went away: dropped")
    finally:
        served.stop()

"""Package sources: spec indexes over worker defaults, credentials kept out of records, torch pick."""

from __future__ import annotations

import pytest

from celery_agent.errors import EnvBuildError, SpecError
from celery_agent.executors.indexes import (
    Hardware,
    IndexDefaults,
    expand,
    mask,
    mask_text,
    plain,
    resolve,
    torch_variant,
    wants_torch,
)
from celery_agent.settings import Settings
from celery_agent.spec import TaskSpec

CPU_ONLY = Hardware(gpus=0)
TEMPLATE = "https://wheels.example/whl/{variant}"


def spec(**fields: object) -> TaskSpec:
    return TaskSpec.parse({"repo": ".", "entry": "train.py"} | fields)


def test_find_links_alone_keeps_the_default_index() -> None:
    args = plain(spec(find_links=["wheels"])).args()
    assert args == ["--find-links", "wheels"]


def test_no_index_is_passed_only_when_asked() -> None:
    args = plain(spec(find_links=["wheels"], no_index=True)).args()
    assert args == ["--find-links", "wheels", "--no-index"]


def test_no_index_with_an_index_url_is_refused_naming_both() -> None:
    with pytest.raises(SpecError, match="no_index.*index_url"):
        spec(find_links=["w"], no_index=True, index_url="https://m.example/simple")


def test_worker_defaults_fill_what_the_spec_leaves_unset() -> None:
    defaults = IndexDefaults("https://mirror.corp/simple", ("https://extra.corp/simple",), "")
    got = resolve(spec(requirements=["six"]), defaults, ["six"])
    assert got.args() == [
        "--index-url", "https://mirror.corp/simple",
        "--extra-index-url", "https://extra.corp/simple",
    ]  # fmt: skip
    own = resolve(spec(index_url="https://mine.example/simple"), defaults, ["six"])
    assert own.index_url == "https://mine.example/simple"


def test_settings_read_a_mirror_and_extra_indexes_from_the_environment() -> None:
    s = Settings.load(
        environ={
            "CELERY_AGENT_INDEX_URL": "https://mirror.corp/simple",
            "CELERY_AGENT_EXTRA_INDEX_URLS": "https://a.corp/simple https://b.corp/simple",
            "CELERY_AGENT_TORCH_CUDA_VARIANTS": "cu118,cu121",
        },
        config_file=None,
    )
    defaults = IndexDefaults.of(s)
    assert defaults.index_url == "https://mirror.corp/simple"
    assert defaults.extra_index_urls == ("https://a.corp/simple", "https://b.corp/simple")
    assert defaults.cuda_variants == ("cu118", "cu121")


def test_credentials_come_from_the_workers_environment() -> None:
    url = "https://bot:${MIRROR_TOKEN}@mirror.corp/simple"
    assert expand(url, {"MIRROR_TOKEN": "s3cret"}) == "https://bot:s3cret@mirror.corp/simple"
    with pytest.raises(EnvBuildError, match=r"\$\{MIRROR_TOKEN\}") as caught:
        expand(url, {})
    assert "set MIRROR_TOKEN in the worker's environment" in caught.value.hint


def test_a_written_password_is_masked_in_records_and_placeholders_are_kept() -> None:
    s = spec(
        index_url="https://bob:hunter2@mirror.corp/simple",
        extra_index_urls=["https://bot:${TOKEN}@extra.corp/simple", "https://ghp_abc@x.corp/s"],
    )
    stored = s.to_json()
    assert stored["index_url"] == "https://bob:***@mirror.corp/simple"
    assert stored["extra_index_urls"] == [
        "https://bot:${TOKEN}@extra.corp/simple",
        "https://***@x.corp/s",
    ]
    assert "hunter2" not in repr(stored) and "ghp_abc" not in repr(stored)
    assert not TaskSpec.masks_nothing(s.model_dump(mode="json"))
    assert s.index_url == "https://bob:hunter2@mirror.corp/simple", "the message keeps the value"


def test_installer_command_lines_and_output_are_masked() -> None:
    line = "uv pip install --index-url https://bob:hunter2@mirror.corp/simple six"
    assert mask_text(line) == "uv pip install --index-url https://bob:***@mirror.corp/simple six"
    assert mask("https://mirror.corp/simple") == "https://mirror.corp/simple"


def test_the_cache_key_never_holds_a_password() -> None:
    parts = plain(spec(index_url="https://bob:hunter2@mirror.corp/simple")).key_parts()
    assert "hunter2" not in repr(parts)


@pytest.mark.parametrize(
    "lines, wanted",
    [
        (["torch==2.3.0"], True),
        (["numpy", "torchvision>=0.18"], True),
        (["TorchAudio"], True),
        (["torchmetrics", "pytorch-lightning"], False),
        (["# torch", "-r other.txt"], False),
    ],
)
def test_torch_is_recognized_by_distribution_name(lines: list[str], wanted: bool) -> None:
    assert wants_torch(lines) is wanted


@pytest.mark.parametrize(
    "hardware, variant",
    [
        (Hardware(gpus=0), "cpu"),
        (Hardware(gpus=2, cuda=None), "cpu"),
        (Hardware(gpus=1, cuda=(12, 2)), "cu121"),
        (Hardware(gpus=1, cuda=(12, 4)), "cu124"),
        (Hardware(gpus=8, cuda=(13, 0)), "cu130"),
        (Hardware(gpus=1, cuda=(11, 4)), "cpu"),
    ],
)
def test_the_torch_build_follows_the_gpus_and_the_drivers_cuda(
    hardware: Hardware, variant: str
) -> None:
    assert torch_variant(hardware) == variant


def test_torch_without_a_chosen_index_gets_the_index_of_this_workers_hardware() -> None:
    defaults = IndexDefaults(torch_index_template=TEMPLATE)
    gpu = Hardware(gpus=1, cuda=(12, 1))
    got = resolve(spec(requirements=["torch"]), defaults, ["torch"], gpu)
    assert got.torch_variant == "cu121"
    assert got.args() == ["--extra-index-url", "https://wheels.example/whl/cu121"]
    assert got.record() == {
        "torch_index": {"variant": "cu121", "url": "https://wheels.example/whl/cu121"}
    }
    cpu = resolve(spec(requirements=["torch"]), defaults, ["torch"], CPU_ONLY)
    assert cpu.torch_index == "https://wheels.example/whl/cpu"
    assert cpu.key_parts() != got.key_parts(), "a CPU env and a CUDA env are different entries"


def test_a_chosen_index_or_no_torch_means_no_pick() -> None:
    defaults = IndexDefaults(torch_index_template=TEMPLATE)
    chosen = spec(requirements=["torch"], index_url="https://mine.example/simple")
    assert resolve(chosen, defaults, ["torch"], CPU_ONLY).torch_variant is None
    assert resolve(spec(requirements=["six"]), defaults, ["six"], CPU_ONLY).record() == {}
    off = IndexDefaults(torch_index_template="")
    assert resolve(spec(requirements=["torch"]), off, ["torch"], CPU_ONLY).torch_index is None


def test_celery_agent_config_shows_a_mirrors_password_as_stars(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from celery_agent.cli import main

    monkeypatch.setenv("CELERY_AGENT_INDEX_URL", "https://bot:hunter2@mirror.corp/simple")
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["config"]) == 0
    shown = capsys.readouterr().out
    assert "https://bot:***@mirror.corp/simple" in shown and "hunter2" not in shown

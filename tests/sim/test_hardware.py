"""Hardware catalog: lookups, JSON profiles, validation."""

from __future__ import annotations

import json

import pytest

from batchserve.sim.hardware import DTYPES, GiB, HARDWARE, CatalogError, Hardware, get_hardware

REQUIRED = ("h100-sxm", "h200", "a100-80gb", "a100-40gb", "l40s", "mi300x", "gh200", "cpu-local")


def test_catalog_has_required_entries() -> None:
    for name in REQUIRED:
        hw = HARDWARE[name]
        assert hw.name == name
        assert hw.peak_flops and set(hw.peak_flops) <= set(DTYPES)
        assert hw.memory_bandwidth > 0 and hw.memory_bytes > 0 and hw.interconnect_bandwidth > 0


def test_datasheet_figures() -> None:
    h100 = HARDWARE["h100-sxm"]
    assert h100.peak_flops["bf16"] == 989.4e12 and h100.peak_flops["fp8"] == 1978.9e12
    assert h100.memory_bandwidth == 3.35e12 and h100.interconnect_bandwidth == 450e9
    assert HARDWARE["h200"].memory_bandwidth == 4.8e12
    assert HARDWARE["a100-40gb"].memory_bandwidth == 1.555e12
    assert HARDWARE["mi300x"].memory_bytes == 192 * GiB
    assert HARDWARE["cpu-local"].memory_bytes == 24 * GiB


@pytest.mark.parametrize("name", list(HARDWARE))
def test_fp16_equals_bf16_where_present(name: str) -> None:
    flops = HARDWARE[name].peak_flops
    if "fp16" in flops:
        assert flops["fp16"] == flops["bf16"]


def test_supports() -> None:
    assert not get_hardware("a100").supports("fp8")
    assert get_hardware("a100").supports("int8")
    assert get_hardware("h100").supports("fp8")
    assert get_hardware("h100").supports("bfloat16")  # HF torch_dtype spelling
    assert not HARDWARE["cpu-local"].supports("int8")


def test_flops_unsupported_dtype_is_clear_error() -> None:
    with pytest.raises(CatalogError, match="fp8.*supported: bf16"):
        HARDWARE["a100-80gb"].flops("fp8")
    assert HARDWARE["a100-80gb"].flops("BF16") == 312e12


@pytest.mark.parametrize(
    ("alias", "name"),
    [("h100", "h100-sxm"), ("H100-SXM", "h100-sxm"), ("a100", "a100-80gb"), ("MI300X", "mi300x"),
     ("a100_40gb", "a100-40gb"), (" gh200 ", "gh200")],
)
def test_lookup_aliases_case_insensitive(alias: str, name: str) -> None:
    assert get_hardware(alias) is HARDWARE[name]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(CatalogError) as e:
        get_hardware("tpu-v5")
    msg = str(e.value)
    assert "tpu-v5" in msg
    for name in REQUIRED:
        assert name in msg


def test_dict_round_trip() -> None:
    for hw in HARDWARE.values():
        d = hw.to_dict()
        assert isinstance(d["peak_flops"], dict)
        json.dumps(d)  # JSON-ready
        back = Hardware.from_dict(d)
        assert back == hw
        assert hash(back) == hash(hw)


def test_json_profile_file(tmp_path) -> None:
    d = HARDWARE["cpu-local"].to_dict() | {"name": "my-box", "memory_bandwidth": 31.5e9, "_source": "calibrate"}
    path = tmp_path / "box.json"
    path.write_text(json.dumps(d))
    hw = get_hardware(str(path))
    assert hw.name == "my-box" and hw.memory_bandwidth == 31.5e9
    assert hw.peak_flops == HARDWARE["cpu-local"].peak_flops


def test_missing_profile_file(tmp_path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        get_hardware(str(tmp_path / "nope.json"))


def test_bad_profile_file_names_path(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**HARDWARE["l40s"].to_dict(), "memory_bandwidth": -1}))
    with pytest.raises(CatalogError, match=r"bad\.json.*memory_bandwidth"):
        get_hardware(str(path))


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"memory_bandwidth": "fast"}, "memory_bandwidth"),
        ({"interconnect_bandwidth": 0}, "interconnect_bandwidth"),
        ({"peak_flops": {"fp4": 1e15}}, "fp4.*valid dtypes"),
        ({"peak_flops": {}}, "peak_flops"),
        ({"max_gpus_per_node": 0}, "max_gpus_per_node"),
        ({"interconnect_latency_s": -1e-6}, "interconnect_latency_s"),
        ({"cache_bytes": -1}, "cache_bytes"),
        ({"memory_bandwith": 1e12}, "memory_bandwith.*valid fields"),
    ],
)
def test_from_dict_bad_field(change: dict, pattern: str) -> None:
    with pytest.raises(CatalogError, match=pattern):
        Hardware.from_dict({**HARDWARE["h100-sxm"].to_dict(), **change})


def test_from_dict_missing_field() -> None:
    d = HARDWARE["h100-sxm"].to_dict()
    del d["memory_bytes"]
    with pytest.raises(CatalogError, match="missing required field.*memory_bytes"):
        Hardware.from_dict(d)


def test_catalog_entries_are_immutable() -> None:
    with pytest.raises(TypeError):
        HARDWARE["h100-sxm"].peak_flops["bf16"] = 1.0  # type: ignore[index]

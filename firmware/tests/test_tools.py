"""tools/build.py, tools/deploy.py and tools/provision.py: what can be checked without a board."""

from __future__ import annotations

import importlib.util
import json
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_seal_" + name, ROOT / "tools" / (name + ".py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _tool("build")
deploy = _tool("deploy")
provision = _tool("provision")

# The goal for the firmware's compiled size (seal + sealproto + board modules).
MPY_BUDGET_BYTES = 48 * 1024


def _expected(board: str) -> set[str]:
    files = {"seal/" + p.stem + ".mpy" for p in (ROOT / "firmware" / "seal").glob("*.py")}
    files |= {
        "sealproto/" + p.stem + ".mpy" for p in (ROOT / "protocol" / "sealproto").glob("*.py")
    }
    for p in (ROOT / "boards" / board).glob("*.py"):
        if p.name != "manifest.py":
            files.add(p.name if p.name == "main.py" else p.stem + ".mpy")
    return files


@pytest.mark.parametrize("board", ["esp32", "rp2", "emulated"])
def test_build_lists_every_module_with_its_compiled_size(board: str, tmp_path: Path) -> None:
    out = tmp_path / board
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build.py"), board, "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(proc.stdout)
    files = {f["path"]: f["bytes"] for f in report["files"]}
    assert set(files) == _expected(board)
    assert {"hal.mpy", "board.mpy", "main.py", "seal/app.mpy", "sealproto/framing.mpy"} <= set(
        files
    )
    for path, size in files.items():
        on_disk = out / path
        assert on_disk.stat().st_size == size > 0, path
        if path.endswith(".mpy"):
            # mpy-cross output starts with "M" and the format version (6 = MicroPython 1.23+).
            assert on_disk.read_bytes()[:2] == b"M\x06", path
    total = report["mpy_total_bytes"]
    assert total == sum(s for p, s in files.items() if p.endswith(".mpy"))
    print(json.dumps({"board": board, "mpy_total_bytes": total}))
    assert total <= MPY_BUDGET_BYTES


def test_build_rejects_an_unknown_board() -> None:
    with pytest.raises(build.BuildError, match="unknown board"):
        build.sources("nosuchboard")


def test_board_manifests_include_the_port_then_the_firmware() -> None:
    fw = (ROOT / "firmware" / "manifest.py").read_text()
    assert 'package("seal")' in fw and 'package("sealproto", base_path="../protocol")' in fw
    for board in ("esp32", "rp2"):
        lines = [
            line
            for line in (ROOT / "boards" / board / "manifest.py").read_text().splitlines()
            if line and not line.startswith("#")
        ]
        assert lines[:2] == [
            'include("$(PORT_DIR)/boards/manifest.py")',
            'include("../../firmware/manifest.py")',
        ]
        assert {'module("board.py")', 'module("hal.py")'} <= set(lines)


def test_deploy_dry_run_builds_and_prints_the_mpremote_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "esp32"
    assert (
        deploy.main(["esp32", "--port", "/dev/ttyUSB9", "--build-dir", str(out), "--dry-run"]) == 0
    )
    printed = capsys.readouterr().out
    cmd = deploy.command("/dev/ttyUSB9", out)
    assert cmd[1:6] == ["connect", "/dev/ttyUSB9", "fs", "cp", "-r"]
    assert cmd[-3:] == [":", "+", "reset"]
    assert sorted(cmd[6:-3]) == ["board.mpy", "hal.mpy", "main.py", "seal", "sealproto"]
    assert "seal/link.mpy" in printed and "reset" in printed.splitlines()[-1]


def test_deploy_romfs_puts_the_modules_in_the_romfs_partition(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rp2"
    argv = ["rp2", "--port", "/dev/ttyACM9", "--build-dir", str(out), "--romfs", "--dry-run"]
    assert deploy.main(argv) == 0
    printed = capsys.readouterr().out
    cmd = deploy.command("/dev/ttyACM9", out, romfs=True)
    assert cmd[1:] == ["connect", "/dev/ttyACM9", "romfs", "deploy", "rom.img",
                       "+", "fs", "cp", "main.py", ":main.py", "+", "reset"]
    # The image `mpremote romfs build` makes: its header, then the modules by name.
    image = (out / "rom.img").read_bytes()
    assert image.startswith(b"\xd2\xcd\x31")
    assert b"link.mpy" in image and b"hal.mpy" in image and b"main.py" not in image
    assert "romfs deploy" in printed.splitlines()[-1]


def test_provision_writes_0600_seal_json_and_never_prints_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys" / "seal-0042.json"
    assert provision.main(["seal-0042", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    conf = json.loads(out.read_text())
    assert conf["device_id"] == "seal-0042"
    key = bytes.fromhex(conf["key"])
    assert len(key) == 32
    assert conf["key"] not in printed.out + printed.err
    assert conf["key"].upper() not in printed.out + printed.err
    assert f"sealink devices add seal-0042 --key-file {out}" in printed.out


def test_provision_keys_differ_and_an_existing_file_is_never_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert provision.main(["seal-a", "--out", str(a)]) == 0
    assert provision.main(["seal-b", "--out", str(b)]) == 0
    assert json.loads(a.read_text())["key"] != json.loads(b.read_text())["key"]
    before = a.read_bytes()
    assert provision.main(["seal-a", "--out", str(a)]) == 1
    assert "refusing to replace" in capsys.readouterr().err
    assert a.read_bytes() == before


def test_provision_rejects_a_bad_device_id(tmp_path: Path) -> None:
    assert provision.main(["bad id!", "--out", str(tmp_path / "x.json")]) == 1
    assert not (tmp_path / "x.json").exists()


def test_provision_to_a_board_builds_the_mpremote_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "seal.json"
    args = ["seal-7", "--out", str(out), "--port", "/dev/ttyACM3", "--dry-run"]
    assert provision.main(args) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "mpremote" in ln)
    assert line.endswith(f"connect /dev/ttyACM3 fs cp {out} :/seal.json")

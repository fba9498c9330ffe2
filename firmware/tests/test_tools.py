"""tools.build, tools.deploy and tools.provision: what can be checked without a board."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from checkout import ROOT

from tools import build, deploy, provision

# The goal for the firmware's compiled size (seal + sealproto + board modules).
MPY_BUDGET_BYTES = 48 * 1024
# What a device imports of sealproto; sealproto.messages holds the public names for hosts.
DEVICE_SEALPROTO = {"__init__", "errors", "cobs", "framing", "cbor", "codec", "auth"}
BOARD_MODULES = {"esp32": {"board", "hal"}, "rp2": {"board", "hal"},
                 "emulated": {"board", "bluetooth", "flashdev", "hal", "i2cbus"}}
# seal.mcu is the HAL of the `machine`-based boards; the emulated board has its own.
MACHINE_BOARDS = {"esp32", "rp2"}


def _expected(board: str) -> set[str]:
    seal = {p.stem for p in (ROOT / "firmware" / "seal").glob("*.py")}
    if board not in MACHINE_BOARDS:
        seal -= {"mcu", "inputs"}
    files = {f"seal/{m}.mpy" for m in seal} | {f"sealproto/{m}.mpy" for m in DEVICE_SEALPROTO}
    return files | {m + ".mpy" for m in BOARD_MODULES[board]} | {"main.py"}


@pytest.mark.parametrize(
    ("board", "how"),
    [("esp32", "script"), ("rp2", "module"), ("emulated", "module")],
)
def test_build_lists_every_module_with_its_compiled_size(
    board: str, how: str, tmp_path: Path
) -> None:
    # Both ways of running it: `python tools/build.py` and `python -m tools.build`.
    out = tmp_path / board
    run = [str(ROOT / "tools" / "build.py")] if how == "script" else ["-m", "tools.build"]
    proc = subprocess.run(
        [sys.executable, *run, board, "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
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


def _statements(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


# What a board takes of its port before the firmware: the port's manifest, as MicroPython's own
# board folders do (ports/rp2/boards/RPI_PICO_W/manifest.py); the ESP32 build only the parts the
# firmware needs, since the port's manifest freezes a _boot.py of its own (boards/esp32/_boot.py).
PORT_PARTS = {
    "emulated": ['include("$(PORT_DIR)/variants/manifest.py")'],
    "rp2": ['include("$(PORT_DIR)/boards/manifest.py")'],
    "esp32": [
        'module("flashbdev.py", base_path="$(PORT_DIR)/modules")',
        'include("$(MPY_DIR)/extmod/asyncio")',
    ],
}


@pytest.mark.parametrize("board", build.BOARDS)
def test_board_manifests_include_the_port_then_the_firmware(board: str) -> None:
    lines = _statements(ROOT / "boards" / board / "manifest.py")
    port = PORT_PARTS[board]
    assert lines[: len(port) + 1] == [*port, 'include("../../firmware/manifest.py")']
    assert {f'module("{m}.py")' for m in BOARD_MODULES[board]} <= set(lines)


def test_the_esp32_boot_is_frozen_only() -> None:
    # The port runs _boot.py from its frozen image alone: in a filesystem build it would be
    # dead weight that looks as if it took effect.
    lines = _statements(ROOT / "boards" / "esp32" / "manifest.py")
    assert 'module("_boot.py")' in lines
    assert "_boot.py" in {target for _, target in build.manifest_files(
        ROOT / "boards" / "esp32" / "manifest.py")}
    assert all("_boot" not in target for _, target in build.sources("esp32"))


def test_the_firmware_manifest_is_one_include_per_feature() -> None:
    features = sorted((ROOT / "firmware" / "manifests").glob("*.py"))
    lines = _statements(ROOT / "firmware" / "manifest.py")
    assert all(line.startswith('include("manifests/') for line in lines), lines
    # Each firmware module is in exactly one feature; seal.mcu only where a board asks for it.
    owner: dict[str, str] = {}
    for feature in features:
        for _, target in build.manifest_files(feature):
            assert target not in owner, f"{target} in {owner.get(target)} and {feature.name}"
            owner[target] = feature.name
    seal = {f"seal/{p.name}" for p in (ROOT / "firmware" / "seal").glob("*.py")}
    assert seal <= set(owner), f"in no feature manifest: {seal - set(owner)}"
    included = {line.split('"')[1].split("/")[1] for line in lines}
    assert included == {f.name for f in features} - {"mcu.py"}


def test_manifests_are_evaluated_as_micropython_does(tmp_path: Path) -> None:
    # Paths relative to the manifest naming them, a manifest included twice counts once, the
    # port's own manifests are the board firmware's business; a bad manifest says which it is.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.py").write_text('package("pkg", files=("a.py",), base_path="..")\n')
    (tmp_path / "manifest.py").write_text(
        'include("$(PORT_DIR)/boards/manifest.py")\n'
        'include("sub/m.py")\ninclude("sub/m.py")\nmodule("pkg/a.py")\n'
        'module("flashbdev.py", base_path="$(PORT_DIR)/modules")\n'
    )
    assert build.manifest_files(tmp_path / "manifest.py") == [
        (tmp_path / "pkg" / "a.py", "pkg/a.py")
    ]
    (tmp_path / "bad.py").write_text('module("missing.py")\n')
    with pytest.raises(build.BuildError, match=r"bad\.py: no such file"):
        build.manifest_files(tmp_path / "bad.py")
    (tmp_path / "worse.py").write_text('require("aioble")\n')
    with pytest.raises(build.BuildError, match=r"worse\.py: NameError"):
        build.manifest_files(tmp_path / "worse.py")


def test_a_build_from_another_manifest_adds_to_the_board(tmp_path: Path) -> None:
    # The firmware tests' build: the emulated board plus sealproto.messages and .timers for
    # test code.
    files = {f["path"] for f in build.build("emulated", tmp_path, manifest=ROOT / "firmware" /
                                            "tests" / "manifest.py")}
    assert files == _expected("emulated") | {"sealproto/messages.mpy", "sealproto/timers.mpy"}


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


def test_deploy_runs_as_a_script_too(tmp_path: Path) -> None:
    # `python tools/deploy.py` puts tools/ on sys.path, not the checkout; it still finds
    # tools.build.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "deploy.py"), "rp2", "--port", "/dev/ttyACM9",
         "--build-dir", str(tmp_path / "rp2"), "--dry-run"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mpremote connect /dev/ttyACM9 fs cp -r" in proc.stdout


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


def test_provision_records_the_public_key_the_board_printed(tmp_path: Path) -> None:
    out = tmp_path / "seal.json"
    assert provision.main(["seal-7", "--out", str(out)]) == 0
    public = "ab" * 64
    assert provision.add_seal_key(out, f"noise\n@pubkey {public}\n") == public
    conf = json.loads(out.read_text())
    assert conf["seal_key"] == public and len(bytes.fromhex(conf["key"])) == 32
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with pytest.raises(provision.ProvisionError, match="no seal key"):
        provision.add_seal_key(out, "Traceback: ChipError 15\n")
    assert "seal.chipsetup" in " ".join(provision.chip_command("/dev/ttyUSB0"))

"""`make install DESTDIR=...` stages the guard, its units, sysusers/tmpfiles/logrotate files, sample configuration and man page where a Debian operator expects them, and the staged units pass `systemd-analyze verify`."""

import os
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from guard.lab.pki import write_lab_pki

PROJECT = Path(__file__).resolve().parents[2]
UNIT_DIR = "usr/local/lib/systemd/system"
UNITS = ("xmpp-guard.service", "xmpp-guard-red.socket", "xmpp-guard-blue.socket", "xmpp-guard-half@.service")


def requires(tool: str, package: str) -> str:
    """The path of ``tool``; skip (naming the Debian package `make test` installs) when it is missing."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not found: install the Debian package {package} (make test does)")
    return path


def make_install(destdir: Path) -> None:
    """Run `make install DESTDIR=destdir` from the project, failing the test with make's output when it fails."""
    make = requires("make", "make")
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("PYTHONPATH", "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS")}
    result = subprocess.run([make, "--no-print-directory", "install", f"DESTDIR={destdir}"], cwd=PROJECT,
                            capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A tree staged once by `make install DESTDIR=...` for the tests of this module."""
    destdir = tmp_path_factory.mktemp("destdir")
    make_install(destdir)
    return destdir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_each_file_is_where_a_debian_operator_expects_it(staged):
    """Units, sysusers, tmpfiles, logrotate, man page, configuration and policies land in their places with their modes."""
    expected = {
        **{f"{UNIT_DIR}/{name}": 0o644 for name in UNITS},
        "usr/local/lib/sysusers.d/xmpp-guard.conf": 0o644,
        "usr/local/lib/tmpfiles.d/xmpp-guard.conf": 0o644,
        "etc/logrotate.d/xmpp-guard": 0o644,
        "usr/local/share/man/man8/guard.8": 0o644,
        "etc/xmpp-guard": 0o750,
        "etc/xmpp-guard/pki": 0o750,
        "etc/xmpp-guard/guard.toml": 0o640,
        "etc/xmpp-guard/policies/allow-all.toml": 0o640,
        "etc/xmpp-guard/policies/allow-all.tests.toml": 0o640,
    }
    assert {path: mode(staged / path) for path in expected} == expected
    for name in UNITS:
        assert (staged / UNIT_DIR / name).read_bytes() == (PROJECT / "deploy" / "systemd" / name).read_bytes()
    assert os.readlink(staged / "usr/local/sbin/guard") == "/opt/xmpp-guard/bin/guard"


def test_the_staged_virtualenv_names_the_place_it_will_run_from(staged):
    """No script, setting or byte-compiled module of the staged venv names the staging folder: they name /opt/xmpp-guard."""
    venv = staged / "opt" / "xmpp-guard"
    compiled = sorted(venv.glob("lib/python3*/site-packages/guard/**/*.pyc"))
    assert compiled and all(str(staged).encode() not in path.read_bytes() for path in compiled)
    assert b"/opt/xmpp-guard/lib/" in compiled[0].read_bytes()
    assert (venv / "bin" / "guard").read_text().splitlines()[0] == "#!/opt/xmpp-guard/bin/python"
    for path in [*sorted((venv / "bin").iterdir()), venv / "pyvenv.cfg"]:
        if path.is_file() and not path.is_symlink():
            assert str(staged).encode() not in path.read_bytes(), path


def test_the_installed_guard_runs_from_its_own_virtualenv(staged):
    """The staged venv's Python imports the guard package from the venv itself (not this checkout) and prints its help."""
    python = staged / "opt" / "xmpp-guard" / "bin" / "python"
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(python), "-c", "import guard; print(guard.__file__)"], capture_output=True, text=True,
                           cwd="/", env=environment, timeout=60)
    assert where.stdout.startswith(str(staged / "opt" / "xmpp-guard" / "lib")), where.stderr
    result = subprocess.run([str(python), str(staged / "opt/xmpp-guard/bin/guard"), "--help"], capture_output=True,
                            text=True, cwd="/", env=environment, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: guard"), result.stderr


def test_the_sample_configuration_listens_on_the_socket_units_and_checks(staged, tmp_path):
    """The installed guard.toml takes its sockets from the socket units by name, writes into the unit's folders, and checks once its PKI is in place."""
    text = (staged / "etc/xmpp-guard/guard.toml").read_text()
    document = tomllib.loads(text)
    assert {side: document["sides"][side]["listen"] for side in ("red", "blue")} == {
        "red": "systemd:domain=INET:name=red", "blue": "systemd:domain=INET:name=blue"}
    assert (document["guard"]["audit"], document["guard"]["status"]) == (
        "/var/log/xmpp-guard/audit.jsonl", "/run/xmpp-guard/status.json")
    assert "../" not in text.replace("# ", "")
    write_lab_pki(staged / "etc/xmpp-guard/pki")
    (tmp_path / "log").mkdir()
    (tmp_path / "run").mkdir()
    local = tmp_path / "guard.toml"
    local.write_text(text.replace('"/etc/xmpp-guard/', f'"{staged}/etc/xmpp-guard/')
                     .replace('"/var/log/xmpp-guard/', f'"{tmp_path}/log/').replace('"/run/xmpp-guard/', f'"{tmp_path}/run/'))
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("LISTEN_", "PYTHONPATH"))}
    result = subprocess.run([str(staged / "opt/xmpp-guard/bin/python"), "-m", "guard", "check-config", str(local)],
                            capture_output=True, text=True, cwd="/", env=environment, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, f"{local}: OK (red: 2 domains, blue: 2 domains)"), result.stderr


def test_the_staged_units_pass_systemd_analyze_verify(staged, tmp_path):
    """systemd-analyze verify, with the staged tree as root (and the host's own units beside), finds nothing to say about any unit."""
    analyze = requires("systemd-analyze", "systemd")
    root = tmp_path / "root"
    shutil.copytree(staged, root, symlinks=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "bin").mkdir()
    shutil.copy2(shutil.which("kill"), root / "bin" / "kill")
    result = subprocess.run([analyze, "verify", "--man=no", f"--root={root}",
                             *(str(root / UNIT_DIR / name) for name in UNITS)],
                            capture_output=True, text=True, timeout=120, env=os.environ | {"SYSTEMD_LOG_LEVEL": "notice"})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_sysusers_and_tmpfiles_make_the_user_and_its_folders(staged, tmp_path):
    """systemd-sysusers creates the xmpp-guard user with no login; systemd-tmpfiles makes its folders with their owners and modes."""
    sysusers = requires("systemd-sysusers", "systemd")
    tmpfiles = requires("systemd-tmpfiles", "systemd")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).write_text("root:x:0:0:root:/root:/bin/sh\n" if name == "passwd" else
                                          "root:x:0:\n" if name == "group" else "")
    result = subprocess.run([sysusers, f"--root={root}", str(staged / "usr/local/lib/sysusers.d/xmpp-guard.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    user = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("xmpp-guard:")]
    assert len(user) == 1 and user[0][5:] == ["/", "/usr/sbin/nologin"]
    uid, gid = int(user[0][2]), int(user[0][3])
    result = subprocess.run([tmpfiles, f"--root={root}", "--create",
                             str(staged / "usr/local/lib/tmpfiles.d/xmpp-guard.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    made = {path: (mode(root / path), (root / path).stat().st_uid, (root / path).stat().st_gid)
            for path in ("etc/xmpp-guard", "etc/xmpp-guard/pki", "var/log/xmpp-guard")}
    assert made == {"etc/xmpp-guard": (0o750, 0, gid), "etc/xmpp-guard/pki": (0o750, 0, gid),
                    "var/log/xmpp-guard": (0o750, uid, gid)}


def test_installing_again_keeps_the_operators_configuration_and_policies(staged):
    """A second `make install` over the same tree leaves the operator's guard.toml and edited policy as they were."""
    mine = staged / "etc/xmpp-guard/guard.toml"
    policy = staged / "etc/xmpp-guard/policies/allow-all.toml"
    mine.write_text(mine.read_text() + "# the operator's own line\n")
    policy.write_text(policy.read_text() + "# the operator's own line\n")
    before = (mine.read_text(), policy.read_text())
    make_install(staged)
    assert (mine.read_text(), policy.read_text()) == before

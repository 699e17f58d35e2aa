"""flexlora.flower.local without a deployment: the app folder as flwr packs it, node
configs as flwr parses them, certificates and keys, and ending process trees."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from flexlora.errors import FlexLoraError
from flexlora.flower.local import (
    NodeSpec,
    _alive,
    _children,
    _end,
    _started_run,
    app_dir,
    make_certificates,
    make_node_key,
)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pathspec, inside flwr
def test_the_app_folder_packs_into_a_bundle_of_its_pyproject_alone() -> None:
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate

    config, _ = load_and_validate(app_dir() / "pyproject.toml", check_module=True)
    fab = build_fab_from_disk(app_dir())

    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {
        "serverapp": "flexlora.flower.server_app:app",
        "clientapp": "flexlora.flower.client_app:app",
    }
    assert set(config["tool"]["flwr"]["app"]["config"]) == {"config", "set", "out", "mode",
                                                             "resume"}  # fmt: skip
    names = zipfile.ZipFile(BytesIO(fab)).namelist()
    assert sorted(names) == [".info/CONTENT", "pyproject.toml"]
    assert len(fab) < 4096


def test_node_spec_values_reach_flower_with_their_types() -> None:
    from flwr.common.config import parse_config_args

    spec = NodeSpec.parse("client-id=a-1 'data-path=/data/my clients/a.json' max-rank=8 x=0.5")

    parsed = parse_config_args([spec.argument()])

    assert parsed == {
        "client-id": "a-1",
        "data-path": "/data/my clients/a.json",
        "max-rank": 8,
        "x": 0.5,
    }
    assert spec.name == "a-1"
    assert NodeSpec.parse("client-id=007 rank-type=1 flag=true x=1e3").config == {
        "client-id": "007",
        "rank-type": 1,
        "flag": True,
        "x": "1e3",  # not as typed: a string, where flwr would read 1000.0
    }


@pytest.mark.parametrize("text", ["", "client-id", "=3", "client-id=a noequals"])
def test_bad_node_specs_are_one_line_errors(text: str) -> None:
    with pytest.raises(FlexLoraError, match="node config"):
        NodeSpec.parse(text)


def test_a_quote_in_a_node_config_value_is_refused() -> None:
    with pytest.raises(FlexLoraError, match="quote"):
        NodeSpec({"data-path": "/it's/here.json"}).argument()


def test_server_certificate_is_signed_by_the_ca_for_loopback(tmp_path: Path) -> None:
    import ipaddress

    from cryptography import x509

    certs = make_certificates(tmp_path)

    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if not
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert certs.key.stat().st_mode & 0o077 == 0  # the private key is the owner's only


def test_node_key_is_an_openssh_p384_pair(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        load_ssh_private_key,
        load_ssh_public_key,
    )

    private, public = make_node_key(tmp_path, "node0")

    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert load_ssh_public_key(public.read_bytes()) == key.public_key()


def test_run_id_is_read_from_flwr_runs_line() -> None:
    assert _started_run("Successfully started run 1234567\n") == 1234567
    assert _started_run("\x1b[32mSuccessfully started run 42 in federation @x/y\x1b[0m") == 42
    assert _started_run("Starting logstream for run_id `42`") is None


def test_a_process_tree_is_ended_with_its_grandchildren(tmp_path: Path) -> None:
    # a child that starts a grandchild in a session of its own, as SuperExec is started
    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " start_new_session=True)\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while not _children(child.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        grandchildren = _children(child.pid)
        assert len(grandchildren) == 1

        _end([child.pid], grace=5)
        child.wait(timeout=10)
        _end(grandchildren, grace=5)

        assert not any(_alive(p) for p in grandchildren)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

#!/usr/bin/env python3
"""Reassemble the IS-Net (DIS) background-removal model from the npm package
``@imgly/background-removal-data@1.4.5`` into one ONNX file for ``dreamgs prep --segmenter``.

The package stores each model as 4 MiB chunks named by their SHA-256; ``dist/resources.json``
lists them in order with their byte offsets. This script checks every chunk's hash, that the
chunks tile the model without gaps, and the SHA-256 of the whole model (pinned below), then
writes the model atomically (a temporary file renamed into place; nothing is left on failure).

    python scripts/fetch_isnet.py --package DIR   # DIR: the unpacked package (holds dist/resources.json)
    python scripts/fetch_isnet.py --tarball imgly-background-removal-data-1.4.5.tgz
    python scripts/fetch_isnet.py                 # runs `npm pack` itself (needs npm and the network)

Options: ``--model medium`` (default, 88 MB, fp32) or ``small`` (44 MB, quantised),
``--out FILE.onnx`` (default ``isnet-<model>.onnx`` in the current folder).

LICENCE: the package, and so the reassembled model, is AGPL-3.0 (IMG.LY). dreamgs does not ship
or vendor it; you fetch it yourself. You must not redistribute it (for example bundled with a
product or a service) unless you comply with the AGPL-3.0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@imgly/background-removal-data@1.4.5"
TARBALL = "imgly-background-removal-data-1.4.5.tgz"
# SHA-256 of each reassembled model (computed once from the package above).
PINNED = {
    "medium": ("b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb", 88188479),
    "small": ("7001d60734fdc112dd9c062635fb59cd401fb82a9d4213134bce4dbd655c803a", 44342436),
}
LICENCE_WARNING = (
    "LICENCE WARNING: this model comes from the npm package @imgly/background-removal-data, which is "
    "licensed AGPL-3.0. dreamgs does not ship it. Use it locally; do not redistribute it (bundled with "
    "a product or offered as a service) unless you comply with the AGPL-3.0.")


class FetchError(Exception):
    pass


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def reassemble(package_dir: Path, model: str, out: Path) -> str:
    """Write ``model`` from the unpacked package at ``package_dir`` to ``out``; return its SHA-256."""
    resources = package_dir / "dist" / "resources.json"
    if not resources.is_file():
        raise FetchError(f"{package_dir}: no dist/resources.json; expected the unpacked {PACKAGE} package")
    try:
        entry = json.loads(resources.read_text(encoding="utf-8"))[f"/models/{model}"]
        chunks, size = entry["chunks"], int(entry["size"])
    except (KeyError, TypeError, ValueError) as e:
        raise FetchError(f"{resources}: no usable entry for /models/{model} ({type(e).__name__}: {e})") from None
    want_sha, want_size = PINNED[model]
    if size != want_size:
        raise FetchError(f"{resources}: /models/{model} is {size} bytes, expected {want_size} (another package version?)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        whole = hashlib.sha256()
        pos = 0
        with os.fdopen(fd, "wb") as dst:
            for chunk in chunks:
                name, (start, end) = chunk["hash"], chunk["offsets"]
                if start != pos or end <= start:
                    raise FetchError(f"{resources}: chunk {name} covers bytes {start}..{end}, expected to start at {pos}")
                data = (package_dir / "dist" / name).read_bytes()
                if len(data) != end - start or hashlib.sha256(data).hexdigest() != name:
                    raise FetchError(f"{package_dir / 'dist' / name}: chunk is damaged (size or SHA-256 mismatch)")
                dst.write(data)
                whole.update(data)
                pos = end
        if pos != size:
            raise FetchError(f"{resources}: the chunks cover {pos} bytes of {size}")
        got = whole.hexdigest()
        if got != want_sha:
            raise FetchError(f"reassembled {model} has SHA-256 {got}, expected {want_sha}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)  # mkstemp creates 0600; give the model ordinary file permissions
        os.replace(tmp, out)
        return got
    except OSError as e:
        raise FetchError(f"cannot reassemble {model}: {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _unpack(tarball: Path, into: Path) -> Path:
    with tarfile.open(tarball, "r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.startswith("package/") and ".." not in Path(m.name).parts]
        if hasattr(tarfile, "data_filter"):  # Python 3.12+, and 3.10/3.11 security releases
            tar.extractall(into, members=members, filter="data")
        else:
            tar.extractall(into, members=members)
    return into / "package"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=LICENCE_WARNING)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--package", metavar="DIR", type=Path, help="the unpacked npm package (holds dist/resources.json)")
    src.add_argument("--tarball", metavar="FILE.tgz", type=Path, help=f"the file `npm pack {PACKAGE}` writes")
    p.add_argument("--model", choices=sorted(PINNED), default="medium", help="which model (default: medium)")
    p.add_argument("--out", metavar="FILE.onnx", type=Path, help="output file (default: isnet-<model>.onnx)")
    p.add_argument("--cache", metavar="DIR", type=Path, help="where `npm pack` writes the tarball (default: a temp folder)")
    args = p.parse_args(argv)
    out = args.out or Path(f"isnet-{args.model}.onnx")
    print(LICENCE_WARNING, file=sys.stderr)
    try:
        with tempfile.TemporaryDirectory() as work:
            work = Path(work)
            if args.package:
                package_dir = args.package
            else:
                tarball = args.tarball
                if tarball is None:
                    cache = args.cache or work
                    cache.mkdir(parents=True, exist_ok=True)
                    tarball = cache / TARBALL
                    if not tarball.is_file():
                        npm = shutil.which("npm")
                        if npm is None:
                            raise FetchError("npm not found: install Node.js/npm, or pass --package/--tarball")
                        res = subprocess.run([npm, "pack", "--silent", PACKAGE], cwd=cache,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                        if res.returncode != 0 or not tarball.is_file():
                            raise FetchError(f"npm pack {PACKAGE} failed: {res.stderr.strip().splitlines()[-1:]}")
                if not tarball.is_file():
                    raise FetchError(f"{tarball}: file not found")
                package_dir = _unpack(tarball, work / "unpacked")
            sha = reassemble(package_dir, args.model, out)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out} (SHA-256 {sha} verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
